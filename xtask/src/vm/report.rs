//! The per-kernel result table, as Markdown for the terminal, `<target>/vm/kernels.md` and
//! docs/results/kernels.md.

use std::time::Duration;

use serde_json::Value;

use super::guest::{Outcome, TestRun};

pub struct KernelResult {
    pub series: &'static str,
    pub package: String,
    pub elapsed: Duration,
    pub outcome: Outcome,
    /// Why this kernel failed; empty when it passed.
    pub problems: Vec<String>,
}

fn hook(check: Option<&Value>, name: &str) -> String {
    let Some(hooks) = check.and_then(|c| c["hooks"].as_array()) else {
        return "not run".into();
    };
    match hooks.iter().find(|h| h["hook"] == name) {
        Some(h) if h["available"] == true => "available".into(),
        Some(_) => "unavailable".into(),
        None => "not run".into(),
    }
}

fn required_hooks(check: Option<&Value>) -> String {
    match check.and_then(|c| c["missing_required"].as_array()) {
        Some(m) if m.is_empty() => "all available".into(),
        Some(m) => format!(
            "missing: {}",
            m.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "not run".into(),
    }
}

/// Program names in the order `hopprobe check` lists them, over all kernels.
fn programs(results: &[KernelResult]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in results {
        for p in r
            .outcome
            .check
            .as_ref()
            .and_then(|c| c["programs"].as_array())
            .into_iter()
            .flatten()
        {
            if let Some(n) = p["program"].as_str()
                && !names.iter().any(|x| x == n)
            {
                names.push(n.to_owned());
            }
        }
    }
    names
}

fn verifier(check: Option<&Value>, program: &str) -> String {
    let Some(p) = check
        .and_then(|c| c["programs"].as_array())
        .and_then(|ps| ps.iter().find(|p| p["program"] == program))
    else {
        return "not run".into();
    };
    let v = &p["verifier"];
    match (v["loaded"].as_bool(), v["verified_insns"].as_u64()) {
        (Some(true), Some(n)) => format!("{n} insns"),
        (Some(true), None) => "loaded".into(),
        (Some(false), _) => "REJECTED".into(),
        _ => "not tried".into(),
    }
}

pub fn markdown(results: &[KernelResult]) -> String {
    let progs = programs(results);
    let mut head = vec![
        "kernel".to_owned(),
        "package".to_owned(),
        "boot + tests".to_owned(),
        // A test that said it does not run here (LAB-OFF without --lab, HOST-ONLY) is skipped.
        "tests passed / failed / skipped".to_owned(),
    ];
    head.extend(progs.iter().map(|p| format!("`{p}` verifier")));
    head.extend(["kprobe", "fentry", "required hooks", "result"].map(str::to_owned));
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in results {
        let check = r.outcome.check.as_ref();
        let passed: u64 = r.outcome.tests.iter().map(TestRun::passed).sum();
        let failed: u64 = r.outcome.tests.iter().map(|t| t.totals.failed).sum();
        let skipped: usize = r.outcome.tests.iter().map(|t| t.not_run.len()).sum();
        let mut row = vec![
            r.series.to_owned(),
            format!("`{}`", r.package),
            format!("{:.0} s", r.elapsed.as_secs_f64()),
            format!("{passed} / {failed} / {skipped}"),
        ];
        row.extend(progs.iter().map(|p| verifier(check, p)));
        row.push(hook(check, "kprobe"));
        row.push(hook(check, "fentry"));
        row.push(required_hooks(check));
        row.push(if r.problems.is_empty() {
            "PASS".into()
        } else {
            format!("FAIL: {}", r.problems.join("; "))
        });
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    // Per test binary, so a skipped or missing binary shows.
    let mut binaries: Vec<&str> = Vec::new();
    for r in results {
        for t in &r.outcome.tests {
            if !binaries.contains(&t.name.as_str()) {
                binaries.push(&t.name);
            }
        }
    }
    if !binaries.is_empty() {
        out.push('\n');
        let mut head = vec!["test binary".to_owned()];
        head.extend(results.iter().map(|r| r.series.to_owned()));
        out.push_str(&format!(
            "| {} |\n|{}\n",
            head.join(" | "),
            "---|".repeat(head.len())
        ));
        for b in binaries {
            let mut row = vec![format!("`{b}`")];
            for r in results {
                row.push(match r.outcome.tests.iter().find(|t| t.name == b) {
                    None => "not run".into(),
                    Some(t) => {
                        let mut cell = format!("{} passed, {} failed", t.passed(), t.totals.failed);
                        if !t.not_run.is_empty() {
                            cell.push_str(&format!(", {} skipped", t.not_run.len()));
                        }
                        if let Some(s) = t.secs {
                            cell.push_str(&format!(" ({s:.0} s)"));
                        }
                        if !t.skipped.is_empty() {
                            cell.push_str(&format!(", SKIPPED: {}", t.skipped.join(", ")));
                        }
                        if t.rc != Some(0) {
                            cell.push_str(&format!(", exit {:?}", t.rc));
                        }
                        cell
                    }
                });
            }
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::guest;

    #[test]
    fn tests_that_did_not_run_are_counted_as_skipped_not_passed() {
        let result = KernelResult {
            series: "6.1",
            package: "linux-image-6.1".into(),
            elapsed: Duration::from_secs(60),
            outcome: guest::parse(guest::tests::SERIAL_WITHOUT_LAB),
            problems: Vec::new(),
        };
        let md = markdown(&[result]);
        assert!(md.contains("| tests passed / failed / skipped |"), "{md}");
        assert!(md.contains("| 60 s | 2 / 1 / 3 |"), "{md}");
        assert!(
            md.contains("| `tests/test:hops` | 2 passed, 1 failed, 3 skipped (2 s)"),
            "{md}"
        );
    }
}
