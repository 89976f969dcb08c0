//! The one test-support library of sinew: the whole-system tests here, the
//! host's integration tests (`host/tests`, a dev-dependency) and the
//! benchmarks use it. A throwaway Postgres cluster, `sinew serve` in this
//! process ([`pg::Server`]) or as a child process ([`process::Proc`]), an
//! HTTP client that sends an `Idempotency-Key` on writes, test tokens, the
//! repository's paths and golden files.

pub mod conformance;
pub mod evolve;
pub mod generate;
pub mod http_target;
pub mod pg;
pub mod process;
pub mod scenario;
pub mod textproto;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the tests' compiled components are cached (`target/component-cache`).
pub fn component_cache() -> PathBuf {
    root().join("target/component-cache")
}

/// `tests/node/node_modules`, installed from the lockfile when missing
/// (jco for the Node conformance run, TypeScript for the npm package's
/// types).
pub fn node_modules() -> PathBuf {
    let dir = root().join("tests/node");
    let installed = ["@bytecodealliance/jco", ".bin/tsc"]
        .iter()
        .all(|p| dir.join("node_modules").join(p).exists());
    if !installed {
        // `npm ci` installs exactly the lockfile; some registry mirrors lack
        // optional platform packages the lockfile lists, and then `npm
        // install` (of the same pinned versions) is the fallback.
        let npm = |args: &[&str]| {
            std::process::Command::new("npm")
                .args(args)
                .current_dir(&dir)
                .status()
                .expect("npm runs (install Node.js and npm)")
        };
        if !npm(&["ci", "--no-audit", "--no-fund"]).success() {
            assert!(
                npm(&["install", "--no-audit", "--no-fund"]).success(),
                "`npm install` in tests/node failed"
            );
        }
    }
    dir.join("node_modules")
}

/// The Python of `target/python-venv`, a virtual environment with
/// `tests/python/requirements.txt` (PyPI `wasmtime`), made when missing.
pub fn python() -> PathBuf {
    use std::process::Command;
    let venv = root().join("target/python-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs (install Python 3)");
        assert!(made.success(), "python3 -m venv failed");
    }
    let installed = Command::new(&python)
        .args(["-c", "import wasmtime.component"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let pip = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(root().join("tests/python/requirements.txt"))
            .status()
            .expect("pip runs");
        assert!(
            pip.success(),
            "pip install of tests/python/requirements.txt failed"
        );
    }
    python
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

/// A small reproducible random number generator (xorshift) for workloads.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The final audit entries of `tests/fixtures/tape-v1.json`, each with the
/// text of the spec that recorded it: recorded on Postgres by sinew at
/// commit b84c6d5, whose tapes had no `v` (SHA-256 call digests).
pub fn first_version_recordings() -> Vec<(String, serde_json::Value)> {
    let path = root().join("tests/fixtures/tape-v1.json");
    let text = std::fs::read_to_string(&path).expect("tests/fixtures/tape-v1.json");
    let fixture: serde_json::Value = serde_json::from_str(&text).expect("the fixture is JSON");
    let entries = fixture["entries"].as_array().expect("`entries`");
    entries
        .iter()
        .map(|e| {
            let spec = fixture["specs"][e["bundle"].as_str().unwrap_or_default()]
                .as_str()
                .expect("each entry's spec, by its bundle hash");
            (spec.to_owned(), e.clone())
        })
        .collect()
}
