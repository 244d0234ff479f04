//! The client ↔ node link as a delay line: a TAP device in each namespace and a process that
//! carries every Ethernet frame from one to the other after a fixed one-way delay. It stands in
//! for netem, which kernels without `sch_netem` (this development host) cannot give, and it is
//! the same mechanism on every kernel, so a delay check means the same everywhere.
//!
//! The TAP devices belong to the process's open descriptors: when it exits, however it exits,
//! the kernel removes both interfaces, and with them the link.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::fd::AsRawFd,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

/// One end of the link: a namespace (by its name under /run/netns) and the interface name the
/// TAP device gets there.
#[derive(Debug, Clone)]
pub struct End {
    pub netns: String,
    pub ifname: String,
}

/// Largest frame a TAP device without offloads hands over (MTU 1500 + Ethernet header), with
/// room to spare should the MTU be raised.
const FRAME_MAX: usize = 65_536;

/// Opens a TAP device named `end.ifname` inside `end.netns`. The device lives in the namespace
/// the descriptor was opened in, so the calling thread enters it only for the open.
fn open_tap(end: &End) -> io::Result<File> {
    let target = File::open(format!("/run/netns/{}", end.netns))?;
    let home = File::open("/proc/thread-self/ns/net")?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let opened = tap_here(&end.ifname);
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    opened
}

fn tap_here(ifname: &str) -> io::Result<File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {ifname} is too long"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq that outlives the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

/// Asks the kernel to wake this thread's sleeps on time rather than up to 50 µs late: the
/// delay line's precision is what a link-delay check measures against.
fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Carries frames read from `from` to `to`, each `delay` after it was read. Frames keep their
/// order: the delay is the same for all, so a FIFO is the schedule.
fn direction(from: File, to: File, delay: Duration) -> io::Result<()> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        tight_timer_slack();
        let mut to = to;
        for (due, frame) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            // A frame the far end cannot take (its interface not up yet, say) is lost, as
            // on a real wire; TCP and ARP repair it.
            let _ = to.write(&frame);
        }
    });
    let mut from = from;
    let mut buf = vec![0u8; FRAME_MAX];
    let read_result = loop {
        match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    if writer.join().is_err() {
        return Err(io::Error::other("writer thread panicked"));
    }
    read_result
}

/// Creates the link's two TAP devices and carries frames both ways until killed.
pub fn run(a: &End, b: &End, delay: Duration) -> io::Result<()> {
    let tap_a = open_tap(a).map_err(|e| annotate(e, a))?;
    let tap_b = open_tap(b).map_err(|e| annotate(e, b))?;
    let (a_in, b_in) = (tap_a.try_clone()?, tap_b.try_clone()?);
    let forward = thread::spawn(move || direction(a_in, tap_b, delay));
    let back = direction(b_in, tap_a, delay);
    let forward = forward
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("link thread panicked")));
    back.and(forward)
}

fn annotate(e: io::Error, end: &End) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("TAP device {} in {}: {e}", end.ifname, end.netns),
    )
}
