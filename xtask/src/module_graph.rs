//! Import cycles between a crate's top-level modules, found from the source text: a module
//! that names `crate::other` depends on `other`. Cycles make a codebase hard to read in any
//! order and to split, so the test below keeps every crate of the workspace free of them.
//!
//! Granularity is the top-level module (`run`, `hops`, `names`, …): a directory module counts
//! as one, with everything below it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Module → the modules it names, for the crate whose sources are in `src`.
pub fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    walk(src, &mut files);
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let Some(first) = rel.components().next() else {
            continue;
        };
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // The crate roots and binaries own the tree; they are not modules of it.
        if matches!(module.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap_or_default();
        let deps = g.entry(module.clone()).or_default();
        for name in crate_paths(&text) {
            if name != module {
                deps.insert(name);
            }
        }
    }
    g
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The first component of every `crate::…` path in `text`, braces of a grouped `use`
/// included (`use crate::{a::X, b};` names `a` and `b`).
fn crate_paths(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        // `hopprobe_formats::crate::` does not exist; `$crate::` in macros is the same crate.
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(after));
        }
        rest = after;
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

fn ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// A cycle, as the modules along it, if there is one.
pub fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|p| p == n).unwrap_or(0);
                let mut c = path[from..].to_vec();
                c.push(n.to_owned());
                return Some(c);
            }
            None => {}
        }
        marks.insert(n.to_owned(), Mark::Open);
        path.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_and_plain_paths_are_read() {
        let text = "use crate::{\n    attach::{ebpf, probe::X},\n    exit, names::Y,\n};\n\
                    fn f() { crate::report::main(); let _ = crate::hops::addr::of(); }";
        assert_eq!(
            crate_paths(text),
            ["attach", "exit", "names", "report", "hops"]
        );
    }

    #[test]
    fn a_cycle_is_found_and_named() {
        let g: BTreeMap<String, BTreeSet<String>> = [
            ("config", &["http2"][..]),
            ("http2", &["conn"]),
            ("conn", &["config", "clock"]),
            ("clock", &[]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
        assert_eq!(
            cycle(&g),
            Some(vec![
                "config".into(),
                "http2".into(),
                "conn".into(),
                "config".into()
            ])
        );
    }

    /// Every crate of the workspace: its top-level modules form no cycle.
    #[test]
    fn no_crate_has_an_import_cycle() {
        let root = crate::cmd::workspace_root();
        for krate in [
            "probe-user",
            "loadgen",
            "formats",
            "xtask",
            "tests",
            "probe-common",
        ] {
            let g = graph(&root.join(krate).join("src"));
            assert!(g.len() > 1, "{krate}: no modules found");
            if let Some(c) = cycle(&g) {
                panic!("{krate}: import cycle {}", c.join(" -> "));
            }
        }
    }
}
