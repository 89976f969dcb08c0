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
        if let Some(c) = load_checked(engine, &path) {
            return Ok((c, true));
        }
        // Processes starting together compile once: the first takes the
        // lock, the others wait (at most 5 minutes) and load its result.
        let writable = std::fs::create_dir_all(dir).is_ok();
        let _guard = CompileLock::take(&path.with_extension("cwasm.lock"));
        if let Some(c) = load_checked(engine, &path) {
            return Ok((c, true));
        }
        let compiled = engine
            .precompile_component(&make()?)
            .map_err(|e| anyhow!("{e:?}"))?;
        if writable {
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

/// The cache file at `path`, if its checksum matches.
fn load_checked(engine: &wasmtime::Engine, path: &Path) -> Option<Component> {
    let sum = std::fs::read_to_string(checksum_path(path)).ok()?;
    if file_crc32(path)? != sum.trim() {
        return None;
    }
    // SAFETY: the file is what `precompile_component` wrote for this
    // component and wasmtime version (its checksum matches the one written
    // with it), wasmtime checks the engine configuration in its header, and
    // it is mapped privately: later writes to the path (another process's
    // rebuild renames a new file over it) do not change this mapping.
    #[expect(
        unsafe_code,
        reason = "deserializing our own precompiled component, checksum verified"
    )]
    let loaded = unsafe { Component::deserialize_file(engine, path) };
    loaded.ok()
}

/// An advisory lock (`flock`) on a file beside the cache entry, held while
/// one process compiles. The kernel releases it when its holder exits, even
/// when killed: a compile cut short never holds up the next start. The
/// file itself stays (removing it would let two processes lock two
/// different files of the same name).
struct CompileLock {
    /// The locked file: closing it releases the lock.
    _held: Option<std::fs::File>,
}

impl CompileLock {
    fn take(lock: &Path) -> CompileLock {
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock)
        else {
            // A read-only cache (baked into an image): nothing can be
            // written, so there is nothing to lock.
            return CompileLock { _held: None };
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            match file.try_lock() {
                Ok(()) => return CompileLock { _held: Some(file) },
                // A file system without locks: compile without one.
                Err(std::fs::TryLockError::Error(_)) => return CompileLock { _held: None },
                Err(std::fs::TryLockError::WouldBlock) => {}
            }
            if std::time::Instant::now() > deadline {
                return CompileLock { _held: None };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
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
        let _ = std::fs::remove_file(p.with_extension("cwasm.lock"));
        let _ = std::fs::remove_file(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// The smallest component: the preamble, no sections.
    const EMPTY: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn load(dir: &Path) -> bool {
        let engine = wasmtime::Engine::default();
        load_or_compile_keyed(&engine, Kind::Snapshot, "00ff", Some(dir), || {
            Ok(EMPTY.to_vec())
        })
        .expect("compiles")
        .1
    }

    #[test]
    fn a_lock_file_left_by_a_killed_process_holds_nothing_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = keyed_path(dir.path(), Kind::Snapshot, "00ff");
        // What a process killed while compiling leaves: the lock file, its
        // lock gone with the process.
        std::fs::write(path.with_extension("cwasm.lock"), "").unwrap();
        let started = Instant::now();
        assert!(!load(dir.path()), "nothing was cached yet");
        // The old lock (a file whose existence was the lock) made this
        // wait until the file was 5 minutes old.
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "compiling waited {:?} for a lock nobody held",
            started.elapsed()
        );
        assert!(load(dir.path()), "the second load comes from the cache");
    }

    #[test]
    fn a_held_lock_makes_others_wait_and_then_load_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = keyed_path(dir.path(), Kind::Snapshot, "00ff");
        let holder = CompileLock::take(&path.with_extension("cwasm.lock"));
        assert!(holder._held.is_some(), "the first takes the lock");
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn({
            let dir = dir.path().to_path_buf();
            move || tx.send(load(&dir)).unwrap()
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "a second process compiled while the first held the lock"
        );
        // The holder finishes: it writes the cache, then releases the lock.
        let engine = wasmtime::Engine::default();
        let compiled = engine.precompile_component(EMPTY).unwrap();
        std::fs::write(&path, &compiled).unwrap();
        std::fs::write(checksum_path(&path), crc32(&compiled)).unwrap();
        drop(holder);
        let from_cache = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert!(from_cache, "the waiter loads what the holder wrote");
        waiter.join().unwrap();
    }

    #[test]
    fn a_damaged_cache_file_is_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!load(dir.path()));
        let path = keyed_path(dir.path(), Kind::Snapshot, "00ff");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(!load(dir.path()), "a damaged file is not loaded");
        assert!(load(dir.path()), "and the rewritten one is");
    }
}
