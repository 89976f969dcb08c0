//! Shared helpers for sinew's whole-system tests and benchmarks.

pub mod generate;
pub mod http_target;
pub mod pg;
pub mod scenario;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The spec files (`*.json`) directly inside `dir` (relative to the root),
/// sorted by name.
pub fn specs_in(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Compares `actual` with the golden file at `path`; with `BLESS=1` in the
/// environment, writes it instead. Returns an error message on mismatch.
pub fn golden(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(path, actual)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "missing golden file {} ({e}); run with BLESS=1 to create it",
            path.display()
        )
    })?;
    if expected == actual {
        return Ok(());
    }
    let diff = similar_lines(&expected, actual);
    Err(format!(
        "{} differs from the output (run with BLESS=1 to accept):\n{diff}",
        path.display()
    ))
}

fn similar_lines(expected: &str, actual: &str) -> String {
    let mut out = String::new();
    for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            out.push_str(&format!("line {}:\n- {e}\n+ {a}\n", i + 1));
            if out.len() > 2000 {
                break;
            }
        }
    }
    let (ne, na) = (expected.lines().count(), actual.lines().count());
    if ne != na {
        out.push_str(&format!("({ne} lines expected, {na} produced)\n"));
    }
    out
}
