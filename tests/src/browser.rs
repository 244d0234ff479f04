//! Headless Chromium (Debian's `chromium`) for tests that look at the HTML report as a browser
//! renders it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The browser, or `None` (with a SKIPPED message) when it is not installed — a failure
/// instead under `HOPPROBE_BROWSER_TESTS=require`, which `cargo xtask test` sets as root after
/// installing it, so CI never skips silently.
pub fn chromium(test: &str) -> Option<PathBuf> {
    // The test VMs carry no browser; the same CI run renders the page on the host. xtask's VM
    // runner counts a test that says HOST-ONLY as skipped (xtask vm::guest::NOT_RUN_HERE).
    if std::env::var("HOPPROBE_BROWSER_TESTS").as_deref() == Ok("off") {
        eprintln!("HOST-ONLY {test}: Chromium runs on the host (HOPPROBE_BROWSER_TESTS=off)");
        return None;
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    if std::env::var("HOPPROBE_BROWSER_TESTS").as_deref() == Ok("require") {
        panic!(
            "{test}: HOPPROBE_BROWSER_TESTS=require but chromium is not installed (apt-get install chromium)"
        );
    }
    eprintln!("SKIPPED {test}: needs chromium (apt-get install chromium)");
    None
}

/// Chromium's flags for a run that touches no network and leaves nothing behind.
fn base(browser: &Path, profile: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The DOM after Chromium loaded and rendered `page`.
pub fn dump_dom(browser: &Path, page: &Path) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = base(browser, profile.path())
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PNG screenshot of `page`.
pub fn screenshot(browser: &Path, page: &Path, png: &Path) {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = base(browser, profile.path())
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,2400")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
