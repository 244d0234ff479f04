//! For the tests of the crates that write these formats (feature `testing`): the golden files
//! in `formats/tests/data` and the schemas in `formats/schemas`, found from this crate's own
//! directory so every crate's tests read the same files.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn here() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the golden file `name`, which the schema tests validate and read
/// back; `UPDATE_GOLDEN=1` rewrites it (for a deliberate change of the format).
pub fn golden(name: &str, actual: &str) {
    let path = here().join("tests/data").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()));
    assert!(actual == want, "{name} changed:\n{actual}");
}

/// The golden files' directory.
pub fn golden_dir() -> PathBuf {
    here().join("tests/data")
}

/// A schema of `formats/schemas`, compiled (JSON Schema draft 2020-12).
pub struct Schema {
    name: String,
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    pub fn load(name: &str) -> Self {
        let path = here().join("schemas").join(name);
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V2020_12);
        let index = compiler
            .compile(path.to_str().expect("utf-8 path"), &mut schemas)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        Self {
            name: name.to_owned(),
            schemas,
            index,
        }
    }

    pub fn check(&self, v: &Value) -> Result<(), String> {
        self.schemas
            .validate(v, self.index)
            .map_err(|e| format!("{e:#}"))
    }

    pub fn assert_valid(&self, v: &Value) {
        if let Err(e) = self.check(v) {
            panic!("{} rejects {v}:\n{e}", self.name);
        }
    }

    /// Every non-blank line of a JSON Lines text.
    pub fn assert_lines_valid(&self, text: &str) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            self.assert_valid(&serde_json::from_str(line).expect("a JSON line"));
        }
    }

    pub fn assert_invalid(&self, v: &Value) {
        assert!(self.check(v).is_err(), "{} accepts {v}", self.name);
    }
}
