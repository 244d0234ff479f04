//! loadgen's top-level modules import each other in no cycle. A cycle (there were two:
//! `run <-> epoll` and `config -> http2 -> conn -> config`) means no module of it can be read,
//! tested or moved without the others; the test names the cycle if one comes back.
//!
//! `cargo xtask test` runs the same check over every crate (`xtask/src/module_graph.rs`); this
//! one runs with `cargo test -p loadgen`, where a change to loadgen is tested, and needs no root.

use std::path::Path;

/// Reads a crate's module graph from its sources and finds cycles in it. Self-contained (std
/// only, nothing of loadgen) so that it can be copied or moved into a shared test helper for
/// the other crates (probe-user wants the same check); it and `xtask/src/module_graph.rs`
/// should then become that one helper.
///
/// Granularity is the top-level module: `report/json.rs` counts as `report`. Only `crate::`
/// paths are read (use declarations, grouped or not, and paths in code or doc comments): a
/// `super::` path that leaves a directory module is not seen, which is why the crates name
/// other top-level modules through `crate::`.
mod module_graph {
    use std::{
        collections::{BTreeMap, BTreeSet},
        fs,
        path::{Path, PathBuf},
    };

    /// Module -> the top-level modules it names.
    pub type Graph = BTreeMap<String, BTreeSet<String>>;

    /// The module graph of the crate whose sources are in `src`.
    pub fn graph(src: &Path) -> std::io::Result<Graph> {
        let mut files = Vec::new();
        rust_files(src, &mut files)?;
        let mut g = Graph::new();
        for file in files {
            let rel = file.strip_prefix(src).unwrap_or(&file);
            let Some(first) = rel.components().next() else {
                continue;
            };
            let first = first.as_os_str().to_string_lossy();
            let module = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
            // The crate roots hold the tree rather than being modules of it; `bin/` files are
            // crates of their own.
            if matches!(module.as_str(), "lib" | "main" | "bin") {
                continue;
            }
            let text = fs::read_to_string(&file)?;
            let deps = g.entry(module.clone()).or_default();
            deps.extend(crate_paths(&text).into_iter().filter(|d| *d != module));
        }
        Ok(g)
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                rust_files(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
        Ok(())
    }

    /// The first segment of every `crate::` path in `text`; `use crate::{a::X, b::{c, d}}`
    /// names `a` and `b`.
    pub fn crate_paths(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            match after.strip_prefix('{') {
                Some(group) => names.extend(top_level_items(group).map(ident)),
                None => names.push(ident(after)),
            }
            rest = after;
        }
        // `crate::{self, …}` and `crate::*` name no module.
        names.retain(|n| !n.is_empty() && n != "self");
        names
    }

    /// The comma-separated items of a `{…}` group up to its closing brace, nested groups
    /// kept inside their item.
    fn top_level_items(group: &str) -> impl Iterator<Item = &str> {
        let mut items = Vec::new();
        let (mut depth, mut start) = (0usize, 0);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&group[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.into_iter()
    }

    fn ident(s: &str) -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    }

    /// A cycle, as the modules along it with the first repeated at the end, if there is one.
    pub fn cycle(g: &Graph) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            OnPath,
            Done,
        }
        fn visit<'a>(
            n: &'a str,
            g: &'a Graph,
            marks: &mut BTreeMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            match marks.get(n) {
                Some(Mark::Done) => return None,
                Some(Mark::OnPath) => {
                    let from = path.iter().position(|p| *p == n).unwrap_or(0);
                    let mut c: Vec<String> = path[from..].iter().map(|p| p.to_string()).collect();
                    c.push(n.to_owned());
                    return Some(c);
                }
                None => {}
            }
            marks.insert(n, Mark::OnPath);
            path.push(n);
            for d in g.get(n).into_iter().flatten() {
                if let Some(c) = visit(d, g, marks, path) {
                    return Some(c);
                }
            }
            path.pop();
            marks.insert(n, Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        g.keys()
            .find_map(|n| visit(n, g, &mut marks, &mut Vec::new()))
    }

    /// Panics naming the cycle and the whole graph if `src`'s modules form a cycle.
    pub fn assert_acyclic(src: &Path) {
        let g = graph(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
        assert!(g.len() > 1, "no modules found in {}", src.display());
        if let Some(c) = cycle(&g) {
            let edges: Vec<String> = g
                .iter()
                .map(|(m, deps)| {
                    format!(
                        "  {m} -> {}",
                        Vec::from_iter(deps.iter().map(String::as_str)).join(", ")
                    )
                })
                .collect();
            panic!(
                "import cycle in {}: {}\nthe module graph:\n{}",
                src.display(),
                c.join(" -> "),
                edges.join("\n")
            );
        }
    }
}

#[test]
fn loadgen_modules_import_each_other_in_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = module_graph::graph(&src).expect("loadgen's sources");
    // The engines, once a cycle, must still be seen, or the check would pass on nothing.
    assert!(g["run"].contains("epoll"), "{g:?}");
    assert!(g["config"].contains("conn"), "{g:?}");
    module_graph::assert_acyclic(&src);
}

#[test]
fn grouped_and_nested_paths_name_their_first_segment() {
    let text = "use crate::{\n    cli::{Opts, OutputFormat},\n    conn::{self, Dial},\n    exit, self,\n};\n\
                use crate::timer::{Elapsed, Timer};\n\
                fn f() { crate::epoll::worker(); let _ = crate::report::json::report; }";
    assert_eq!(
        module_graph::crate_paths(text),
        ["cli", "conn", "exit", "timer", "epoll", "report"]
    );
}

/// The check itself fails on a cycle: loadgen's old `config -> http2 -> conn -> config`, in a
/// source tree with a directory module and a crate root beside it.
#[test]
fn a_cycle_in_a_source_tree_is_found_and_named() {
    let src = Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-graph-cycle/src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("report")).unwrap();
    for (file, text) in [
        (
            "lib.rs",
            "pub mod config; pub mod conn; pub mod http2; pub mod report;",
        ),
        ("config.rs", "use crate::{cli::Opts, http2::H2Request};"),
        ("http2.rs", "use crate::conn::Stream;"),
        ("conn.rs", "fn family() { crate::config::Family::Any; }"),
        ("report/mod.rs", "pub mod json;"),
        ("report/json.rs", "use crate::{stats::Series, report::x};"),
    ] {
        std::fs::write(src.join(file), text).unwrap();
    }
    let g = module_graph::graph(&src).unwrap();
    assert_eq!(
        Vec::from_iter(g["report"].iter().map(String::as_str)),
        ["stats"],
        "a directory module is one node, its own paths no edge"
    );
    assert!(!g.contains_key("lib"));
    assert_eq!(
        module_graph::cycle(&g).map(|c| c.join(" -> ")),
        Some("config -> http2 -> conn -> config".to_owned())
    );
    let panic = std::panic::catch_unwind(|| module_graph::assert_acyclic(&src))
        .expect_err("a cycle fails the check");
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("config -> http2 -> conn -> config"),
        "{message}"
    );
}
