//! The compiled component, cached on disk as `.cwasm` by component hash and
//! wasmtime version. A cache file is trusted only if its CRC-32 matches the
//! one written beside it: a corrupted or truncated file is recompiled, never
//! loaded blindly. (A checksum against accidents, fast enough for every
//! start: 11 MB in about a millisecond, where SHA-256 took 20 ms. Whoever can
//! write the cache directory can replace the binary too.)

use anyhow::{Result, anyhow};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// The wasmtime version the cache key includes.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// What a cache file holds; each kind has its own file names and is pruned
/// on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The core component (one: older builds are removed).
    Component,
    /// The component instrumented for snapshotting (one).
    Instrumented,
    /// A snapshot of the component with one spec loaded (the newest few,
    /// so that switching between specs does not rebuild them).
    Snapshot,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Component => "sinew-",
            Kind::Instrumented => "wizer-",
            Kind::Snapshot => "snapshot-",
        }
    }

    /// How many files of this kind are kept.
    fn keep(self) -> usize {
        match self {
            Kind::Component | Kind::Instrumented => 1,
            Kind::Snapshot => 4,
        }
    }
}

/// The cache file for a component.
pub fn path_for(dir: &Path, component: &[u8]) -> PathBuf {
    keyed_path(dir, Kind::Component, &crate::component_sha256(component))
}

/// The cache file of `kind` for `key` (a hex digest).
pub fn keyed_path(dir: &Path, kind: Kind, key: &str) -> PathBuf {
    dir.join(format!(
        "{}{}-wasmtime-{WASMTIME_VERSION}.cwasm",
        kind.prefix(),
        key.get(..32).unwrap_or(key)
    ))
}

/// The checksum written beside a cache file: CRC-32 (IEEE), 8 hex digits.
fn crc32(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// The CRC-32 of a file, read in chunks (no copy of the whole file).
fn file_crc32(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf).ok()? {
            0 => break,
            n => h.update(buf.get(..n)?),
        }
    }
    Some(format!("{:08x}", h.finalize()))
}

fn checksum_path(p: &Path) -> PathBuf {
    p.with_extension("cwasm.crc32")
}

/// Loads the compiled component from the cache, or compiles it (and writes
/// the cache). Returns whether it came from the cache.
pub fn load_or_compile(
    engine: &wasmtime::Engine,
    component: &[u8],
    dir: Option<&Path>,
) -> Result<(Component, bool)> {
    let key = crate::component_sha256(component);
    load_or_compile_keyed(
        engine,
        Kind::Component,
        &key,
        dir,
        || Ok(component.to_vec()),
    )
}

/// Loads the compiled component of `kind` cached under `key`, or makes its
/// bytes with `make`, compiles them and caches the result. Returns whether
/// it came from the cache.
pub fn load_or_compile_keyed(
    engine: &wasmtime::Engine,
    kind: Kind,
    key: &str,
    dir: Option<&Path>,
    make: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Component, bool)> {
    if let Some(dir) = dir {
        let path = keyed_path(dir, kind, key);
        // Processes starting together compile once: the first takes the
        // lock file, the others wait (at most 5 minutes) for its result.
        let _ = std::fs::create_dir_all(dir);
        let lock = path.with_extension("cwasm.lock");
        let _guard = CompileLock::take(&lock, &checksum_path(&path));
        if let Ok(sum) = std::fs::read_to_string(checksum_path(&path))
            && file_crc32(&path).is_some_and(|c| c == sum.trim())
        {
            // SAFETY: the file is what `precompile_component` wrote for this
            // component and wasmtime version (its checksum matches the one
            // written with it), wasmtime checks the engine configuration in
            // its header, and it is mapped privately: later writes to the
            // path (another process's rebuild renames a new file over it)
            // do not change this mapping.
            #[expect(
                unsafe_code,
                reason = "deserializing our own precompiled component, checksum verified"
            )]
            let loaded = unsafe { Component::deserialize_file(engine, &path) };
            if let Ok(c) = loaded {
                return Ok((c, true));
            }
        }
        let compiled = engine
            .precompile_component(&make()?)
            .map_err(|e| anyhow!("{e:?}"))?;
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = path.with_extension(format!("cwasm.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, &compiled).is_ok() && std::fs::rename(&tmp, &path).is_ok() {
                let _ = std::fs::write(checksum_path(&path), crc32(&compiled));
                prune(dir, kind, &path);
            }
        }
        #[expect(
            unsafe_code,
            reason = "deserializing bytes precompile_component just produced in this process"
        )]
        // SAFETY: produced by `precompile_component` of this very engine.
        let c =
            unsafe { Component::deserialize(engine, &compiled) }.map_err(|e| anyhow!("{e:?}"))?;
        return Ok((c, false));
    }
    let c = Component::new(engine, make()?).map_err(|e| anyhow!("{e:?}"))?;
    Ok((c, false))
}

/// A lock file held while one process compiles; removed on drop.
struct CompileLock(Option<PathBuf>);

impl CompileLock {
    fn take(lock: &Path, done: &Path) -> CompileLock {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(lock)
            {
                Ok(_) => return CompileLock(Some(lock.to_path_buf())),
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    // A read-only cache (baked into an image): no lock
                    // needed to read it, and nothing can be written.
                    return CompileLock(None);
                }
                Err(_) => {}
            }
            // A lock older than the deadline was left by a killed process.
            let stale = std::fs::metadata(lock)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(300));
            if stale {
                let _ = std::fs::remove_file(lock);
                continue;
            }
            if done.exists() && !lock.exists() || std::time::Instant::now() > deadline {
                return CompileLock(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for CompileLock {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes the cache files of `kind` beyond the newest it keeps (older
/// builds, other specs), never `keep` itself.
fn prune(dir: &Path, kind: Kind, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut ours: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(kind.prefix()) && n.ends_with(".cwasm"))
                && p != keep
        })
        .map(|p| {
            let t = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, p)
        })
        .collect();
    // Newest first; `keep` is one of those kept.
    ours.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, p) in ours.into_iter().skip(kind.keep() - 1) {
        let _ = std::fs::remove_file(checksum_path(&p));
        let _ = std::fs::remove_file(p.with_extension("cwasm.sha256"));
        let _ = std::fs::remove_file(p.with_extension("cwasm.json"));
        let _ = std::fs::remove_file(&p);
    }
}
