//! `xtask vm-load OBJECT...`, run inside the VM: loads every program of an eBPF object (without
//! attaching it) and prints what the verifier said. This is how `vm-test --extra-object`
//! checks an object against a kernel; hopprobe's own programs are checked by `hopprobe check`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use aya::{Ebpf, programs::Program};

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

pub fn run(objects: &[PathBuf]) -> Result<()> {
    let mut rejected = Vec::new();
    for path in objects {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut ebpf = Ebpf::load(&bytes).with_context(|| format!("loading {}", path.display()))?;
        for (name, program) in ebpf.programs_mut() {
            let result = match program {
                Program::TracePoint(p) => p.load(),
                Program::CgroupSkb(p) => p.load(),
                Program::SchedClassifier(p) => p.load(),
                Program::SockOps(p) => p.load(),
                Program::KProbe(p) => p.load(),
                Program::SocketFilter(p) => p.load(),
                other => {
                    println!(
                        "vm-load: {name}: {:?} is not handled here",
                        other.prog_type()
                    );
                    rejected.push(name.to_owned());
                    continue;
                }
            };
            match result {
                Ok(()) => {
                    let insns = program
                        .info()
                        .ok()
                        .and_then(|i| i.verified_instruction_count());
                    println!("vm-load: {name}: loaded, verifier processed {insns:?} insns");
                }
                Err(e) => {
                    println!("vm-load: {name}: REJECTED: {}", error_chain(&e));
                    rejected.push(name.to_owned());
                }
            }
        }
    }
    if !rejected.is_empty() {
        bail!("programs not loaded: {}", rejected.join(", "));
    }
    Ok(())
}
