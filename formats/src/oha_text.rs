//! oha's text output (what `oha URL` prints with `--no-tui` or at the end of its TUI, the
//! default `--output-format text`), read by `hopprobe report --loadgen`. It has the summary, the
//! latency percentiles, the status codes and the errors, but not the per-request timings nor
//! the concurrency (`-c`), which the caller may know from elsewhere.
//!
//! The layout, from oha's `src/printer.rs` (unchanged from v1.0 to v1.16 apart from the units):
//!
//! ```text
//! Summary:
//!   Success rate:<TAB>100.00%
//!   Total:<TAB>2494.2895 secs
//!   Slowest:<TAB>0.5338 secs          (also Fastest, Average)
//!   Requests/sec:<TAB>120.2747
//!
//!   Total data:<TAB>1.38 GiB          (also Size/request, Size/sec)
//!
//! Response time histogram:
//!   0.042 [1]      |■■■
//!
//! Response time distribution:
//!   10.00% in 0.2078 secs             (10, 25, 50, 75, 90, 95, 99, 99.9, 99.99)
//!
//! Details (average, fastest, slowest):
//!   DNS+dialup:<TAB>0.0001 secs, 0.0001 secs, 0.0163 secs
//!
//! Status code distribution:
//!   [200] 300000 responses
//!
//! Error distribution:
//!   [1] connection error
//! ```
//!
//! Times are in `secs` up to v1.8; from v1.9 the unit is chosen from the slowest request
//! (or `-u`): `ns`, `us`, `ms`, `sec`, `10 sec`, `min`, `10 min` or `hr` (`10 sec` counts
//! tens of seconds). A value without one is `NaN`, `inf` or `-inf` (no successful request).
//! `--stats-success-breakdown` adds `(2xx only)` and `(4xx + 5xx only)` sections, which are
//! skipped: the percentiles read are those of every request, as in oha's JSON.
//!
//! Quirks of real files, all accepted: `Size/request:` cut to two characters by oha up to
//! v1.4.1 (`4.` for `4.xx KiB`; the size lines are not read); histogram bars of `■`
//! (U+25A0); tabs after the summary keys; colour escapes when the terminal was recorded;
//! CRLF line ends; no newline at the end; lines a wrapper script printed before `Summary:` or
//! after the last section (`Started at …`, `Finished at …`). Anything else that does not
//! parse is an error naming its line, and a file cut short before `Status code distribution:`
//! is an error too.

use std::collections::BTreeMap;

use crate::ReadError;

const WHAT: &str = "oha's text output";

/// What the report needs from oha's text output. Times in seconds; `None` where oha printed
/// `NaN`/`inf` (no successful request) or left the line out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OhaText {
    /// Successful requests (any HTTP status) over all requests, 0–1 (`Success rate:` / 100).
    pub success_rate: Option<f64>,
    /// `Total:` the run's duration.
    pub total_s: Option<f64>,
    pub slowest_s: Option<f64>,
    pub fastest_s: Option<f64>,
    pub average_s: Option<f64>,
    pub requests_per_sec: Option<f64>,
    /// `Response time distribution:` (every request), percent → seconds, in file order.
    pub percentiles: Vec<(f64, Option<f64>)>,
    /// `Status code distribution:` HTTP status → responses.
    pub status_codes: BTreeMap<u16, u64>,
    /// `Error distribution:` error → requests.
    pub errors: BTreeMap<String, u64>,
    /// The time units the file printed (`secs`, `ms`, …), in the order first seen.
    pub units: Vec<String>,
}

impl OhaText {
    /// Responses received (every status).
    pub fn responses(&self) -> u64 {
        self.status_codes.values().sum()
    }

    /// Requests made: responses and errors.
    pub fn total_requests(&self) -> u64 {
        self.responses() + self.errors.values().sum::<u64>()
    }

    /// The percentiles under the keys of oha's JSON `latencyPercentiles` (`p50`, `p99.9`).
    pub fn latency_percentiles(&self) -> BTreeMap<String, Option<f64>> {
        self.percentiles
            .iter()
            .map(|(p, s)| (percentile_key(*p), *s))
            .collect()
    }
}

/// oha's JSON key of a percentile: `p50`, `p99.9` (`format!("p{p}")` of an `f64`).
pub fn percentile_key(percent: f64) -> String {
    format!("p{percent}")
}

/// Seconds per unit, for every unit oha has printed.
fn unit_seconds(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" | "secs" => 1.0,
        "10 sec" => 10.0,
        "min" => 60.0,
        "10 min" => 600.0,
        "hr" | "h" => 3600.0,
        _ => return None,
    })
}

/// A number as oha prints it; `NaN`, `inf`, `-inf` have no value.
fn number(s: &str) -> Result<Option<f64>, String> {
    match s {
        "NaN" | "inf" | "-inf" => Ok(None),
        _ => s
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("`{s}` is not a number")),
    }
}

/// Removes ANSI escape sequences (`ESC [ … letter`, and a lone `ESC x`).
fn strip_ansi(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains('\x1b') {
        return line.into();
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'[').is_some() {
            // Parameters and intermediates, then one final byte in @–~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out.into()
}

/// A time: `0.2641 secs` → seconds, and the unit.
fn time(s: &str) -> Result<(Option<f64>, &str), String> {
    let s = s.trim();
    let (value, unit) = s
        .split_once(' ')
        .ok_or_else(|| format!("`{s}` is not a time (a number and a unit)"))?;
    let unit = unit.trim();
    let per = unit_seconds(unit).ok_or_else(|| format!("unknown time unit `{unit}`"))?;
    Ok((number(value)?.map(|v| v * per), unit))
}

/// `[200] 300000 responses` / `[1] connection error`: the bracketed text and the rest.
fn bracketed(s: &str) -> Option<(&str, &str)> {
    let (inside, rest) = s.strip_prefix('[')?.split_once(']')?;
    Some((inside, rest.trim_start()))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Section {
    Before,
    Summary,
    /// Sections whose lines are not read (histograms, breakdowns, details).
    Skipped,
    Distribution,
    Status,
    Errors,
}

fn heading(line: &str) -> Option<Section> {
    Some(match line.trim_end() {
        "Summary:" => Section::Summary,
        "Response time distribution:" => Section::Distribution,
        "Status code distribution:" => Section::Status,
        "Error distribution:" => Section::Errors,
        "Response time histogram:"
        | "Response time histogram (2xx only):"
        | "Response time distribution (2xx only):"
        | "Response time histogram (4xx + 5xx only):"
        | "Response time distribution (4xx + 5xx only):"
        | "Details (average, fastest, slowest):" => Section::Skipped,
        _ => return None,
    })
}

/// Whether `text` looks like oha's text output: a `Summary:` line comes first, after any
/// lines a wrapper printed.
pub fn looks_like(text: &str) -> bool {
    text.lines()
        .take(50)
        .any(|l| strip_ansi(l).trim_end() == "Summary:")
}

/// Reads oha's text output. Errors name the line (from 1).
pub fn read(text: &str) -> Result<OhaText, ReadError> {
    let mut out = OhaText::default();
    let mut section = Section::Before;
    let mut seen_distribution = false;
    let mut seen_status = false;
    let mut last = 0;
    let err = |line: usize, what: String| ReadError::Text { line, what };
    let unit_seen = |out: &mut OhaText, u: &str| {
        if !out.units.iter().any(|x| x == u) {
            out.units.push(u.to_owned());
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = strip_ansi(raw);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            continue;
        }
        last = n;
        if let Some(s) = heading(line) {
            if s == Section::Summary && section != Section::Before {
                return Err(err(
                    n,
                    "a second `Summary:`: two reports in one file?".into(),
                ));
            }
            if s != Section::Summary && section == Section::Before {
                return Err(err(n, format!("`{}` before `Summary:`", line.trim_end())));
            }
            seen_distribution |= s == Section::Distribution;
            seen_status |= s == Section::Status;
            section = s;
            continue;
        }
        let indented = line.starts_with(' ') || line.starts_with('\t');
        if !indented {
            match section {
                // A wrapper's lines before the report (`Started at …`) and after it
                // (`Finished at …`); an error's text may also run over several lines.
                Section::Before | Section::Status | Section::Errors => continue,
                _ => {
                    return Err(err(
                        n,
                        format!("unexpected line `{line}` (a damaged or cut file?)"),
                    ));
                }
            }
        }
        let body = line.trim();
        match section {
            Section::Before => {}
            Section::Skipped => {}
            Section::Summary => {
                let Some((key, value)) = body.split_once(':') else {
                    return Err(err(n, format!("`{body}` is not `key: value`")));
                };
                let value = value.trim();
                let bad = |e: String| err(n, format!("{key}: {e}"));
                match key {
                    "Success rate" => {
                        let v = value
                            .strip_suffix('%')
                            .ok_or_else(|| bad(format!("`{value}` is not a percentage")))?;
                        out.success_rate = number(v).map_err(bad)?.map(|p| p / 100.0);
                    }
                    "Requests/sec" => out.requests_per_sec = number(value).map_err(bad)?,
                    "Total" | "Slowest" | "Fastest" | "Average" => {
                        let (v, u) = time(value).map_err(bad)?;
                        unit_seen(&mut out, u);
                        *match key {
                            "Total" => &mut out.total_s,
                            "Slowest" => &mut out.slowest_s,
                            "Fastest" => &mut out.fastest_s,
                            _ => &mut out.average_s,
                        } = v;
                    }
                    // Total data, Size/request (cut short by oha ≤ 1.4.1), Size/sec, and
                    // whatever a later version adds.
                    _ => {}
                }
            }
            Section::Distribution => {
                let (p, t) = body
                    .split_once("% in ")
                    .ok_or_else(|| err(n, format!("`{body}` is not `P% in TIME`")))?;
                let p = match number(p) {
                    Ok(Some(p)) if (0.0..=100.0).contains(&p) => p,
                    _ => return Err(err(n, format!("`{p}` is not a percentage"))),
                };
                let (v, u) = time(t).map_err(|e| err(n, e))?;
                unit_seen(&mut out, u);
                out.percentiles.push((p, v));
            }
            Section::Status => {
                let parsed = bracketed(body).and_then(|(code, rest)| {
                    let count: u64 = rest.strip_suffix(" responses")?.trim().parse().ok()?;
                    Some((code.parse::<u16>().ok()?, count))
                });
                let (code, count) = parsed
                    .ok_or_else(|| err(n, format!("`{body}` is not `[STATUS] N responses`")))?;
                *out.status_codes.entry(code).or_default() += count;
            }
            Section::Errors => {
                let parsed = bracketed(body)
                    .and_then(|(count, what)| Some((count.parse::<u64>().ok()?, what)));
                let (count, what) =
                    parsed.ok_or_else(|| err(n, format!("`{body}` is not `[N] ERROR`")))?;
                *out.errors.entry(what.to_owned()).or_default() += count;
            }
        }
    }
    if section == Section::Before {
        return Err(ReadError::Missing {
            key: "Summary:",
            what: WHAT,
        });
    }
    let missing = |key: &str| {
        err(
            last,
            format!("the report ends here, before `{key}` (cut short?)"),
        )
    };
    if out.success_rate.is_none() && out.requests_per_sec.is_none() {
        return Err(missing("Requests/sec:"));
    }
    if !seen_distribution || out.percentiles.is_empty() {
        return Err(missing("Response time distribution:"));
    }
    if !seen_status {
        return Err(missing("Status code distribution:"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO_C32: &str = "Started at 2024-04-10-13-27
Summary:
  Success rate:\t100.00%
  Total:\t2494.2895 secs
  Slowest:\t0.5338 secs
  Fastest:\t0.0418 secs
  Average:\t0.2660 secs
  Requests/sec:\t120.2747

  Total data:\t1.38 GiB
  Size/request:\t4.
  Size/sec:\t579.55 KiB

Response time histogram:
  0.042 [1]      |
  0.288 [123721] |\u{25a0}\u{25a0}\u{25a0}

Response time distribution:
  10.00% in 0.2078 secs
  50.00% in 0.2641 secs
  99.90% in 0.4350 secs


Details (average, fastest, slowest):
  DNS+dialup:\t0.0001 secs, 0.0001 secs, 0.0163 secs

Status code distribution:
  [200] 300000 responses
Finished at 2024-04-10-14-08
";

    #[test]
    fn reads_a_v1_4_report_with_its_quirks() {
        let r = read(ISTIO_C32).expect("reads");
        assert_eq!(r.success_rate, Some(1.0));
        assert_eq!(r.requests_per_sec, Some(120.2747));
        assert_eq!(r.average_s, Some(0.2660));
        assert_eq!(r.total_s, Some(2494.2895));
        assert_eq!(r.latency_percentiles()["p50"], Some(0.2641));
        assert_eq!(r.latency_percentiles()["p99.9"], Some(0.4350));
        assert_eq!(r.status_codes, BTreeMap::from([(200, 300_000)]));
        assert_eq!(r.total_requests(), 300_000);
        assert_eq!(r.units, ["secs"]);
        assert!(looks_like(ISTIO_C32));
    }

    #[test]
    fn units_colours_crlf_and_nan() {
        let text = "\x1b[1m\x1b[4mSummary:\x1b[0m\r\n  \x1b[32mSuccess rate:\t50.00%\x1b[0m\r\n  \
                    Total:\t1.5000 10 sec\r\n  Average:\tNaN ms\r\n  Requests/sec:\t2.0000\r\n\
                    Response time distribution:\r\n  50.00% in 250.0000 us\r\n  \
                    99.00% in 1.2000 ms\r\n  99.99% in inf ns\r\n\
                    Status code distribution:\r\n  [503] 3 responses\r\n\
                    Error distribution:\r\n  [2] connection closed\r\n  [1] timeout";
        let r = read(text).expect("reads");
        assert_eq!(r.success_rate, Some(0.5));
        assert_eq!(r.total_s, Some(15.0));
        assert_eq!(r.average_s, None);
        let p = r.latency_percentiles();
        assert!((p["p50"].expect("p50") - 250e-6).abs() < 1e-15);
        assert!((p["p99"].expect("p99") - 1.2e-3).abs() < 1e-15);
        assert_eq!(p["p99.99"], None);
        assert_eq!(r.total_requests(), 6);
        assert_eq!(r.errors["connection closed"], 2);
        assert_eq!(r.units, ["10 sec", "ms", "us", "ns"]);
    }

    fn error(text: &str) -> String {
        read(text).expect_err("must fail").to_string()
    }

    #[test]
    fn damaged_text_is_refused_with_its_line() {
        let lines: Vec<&str> = ISTIO_C32.lines().collect();
        // Cut in the middle of the distribution, and after its heading.
        let cut = lines[..19].join("\n");
        assert_eq!(
            error(&cut),
            "line 19: the report ends here, before `Status code distribution:` (cut short?)"
        );
        let cut = lines[..18].join("\n");
        assert!(
            error(&cut)
                .starts_with("line 18: the report ends here, before `Response time distribution:`")
        );
        // A line cut mid-way.
        let cut = ISTIO_C32.replace("  50.00% in 0.2641 secs", "  50.00% in 0.26");
        assert_eq!(
            error(&cut),
            "line 20: `0.26` is not a time (a number and a unit)"
        );
        let cut = ISTIO_C32.replace("[200] 300000 responses", "[200] 3000");
        assert_eq!(
            error(&cut),
            "line 28: `[200] 3000` is not `[STATUS] N responses`"
        );
        let bad = ISTIO_C32.replace("0.2660 secs", "0.2660 fortnights");
        assert_eq!(
            error(&bad),
            "line 7: Average: unknown time unit `fortnights`"
        );
        let bad = ISTIO_C32.replace("100.00%", "l00.00%");
        assert_eq!(
            error(&bad),
            "line 3: Success rate: `l00.00` is not a number"
        );
        let bad = ISTIO_C32.replace("Details (average", "Detai#s (average");
        assert!(error(&bad).starts_with("line 24: unexpected line `Detai#s"));
        assert_eq!(
            error("hello\nworld\n"),
            "no `Summary:`: not oha's text output"
        );
        let twice = format!("{ISTIO_C32}{ISTIO_C32}");
        assert!(error(&twice).contains("a second `Summary:`"));
    }
}
