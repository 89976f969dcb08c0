//! The npm package `sinew-core`: the core composed onto the in-memory world
//! ([`crate::COMPOSED`]), transpiled for JavaScript by jco's code generator
//! (`js-component-bindgen`, the library behind `jco transpile`) with its
//! TypeScript types, under the API of `packages/sinew-core/index.js`.
//!
//! `sinew component --npm DIR` writes it (then `npm pack DIR` makes the
//! tarball); the browser preview serves the same files under
//! `sinew-core/` and runs the page on its API, so the studio is the
//! package's first user.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use js_component_bindgen::{InstantiationMode, TranspileOpts};

/// The package's own files, as written in `packages/sinew-core/`.
const SOURCES: &[(&str, &str)] = &[
    (
        "package.json",
        include_str!("../../packages/sinew-core/package.json"),
    ),
    (
        "README.md",
        include_str!("../../packages/sinew-core/README.md"),
    ),
    (
        "index.js",
        include_str!("../../packages/sinew-core/index.js"),
    ),
    (
        "index.d.ts",
        include_str!("../../packages/sinew-core/index.d.ts"),
    ),
];

/// The package's files by path (`component/…` the transpiled component),
/// and the names of the component's core modules.
pub struct Package {
    /// Every file, by its path in the package.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The core modules (`component/<name>`), in the order jco lists them.
    pub modules: Vec<String>,
}

impl Package {
    /// Transpiles the component and gathers the package.
    pub fn new() -> Result<Package> {
        let transpiled = js_component_bindgen::transpile(
            crate::COMPOSED,
            TranspileOpts {
                name: "sinew".into(),
                // `component/sinew.d.ts` and `component/interfaces/*.d.ts`:
                // the WIT's types, for those who use the raw exports.
                no_typescript: false,
                // index.js passes the one import (the clock) and compiles
                // the core modules itself: by reading the files in Node,
                // by streaming in a browser.
                instantiation_mode: Some(InstantiationMode::Async),
                nodejs_compat_disabled: true,
                // Core modules as files, never inlined as base64.
                base64_cutoff: 0,
                ..Default::default()
            },
        )
        .context("transpiling the component with jco's code generator")?;
        let mut files = BTreeMap::new();
        let mut modules = Vec::new();
        for (name, data) in transpiled.files {
            if name.ends_with(".wasm") {
                modules.push(name.clone());
            }
            files.insert(format!("component/{name}"), data);
        }
        for (path, text) in SOURCES {
            files.insert((*path).to_string(), text.as_bytes().to_vec());
        }
        Ok(Package { files, modules })
    }

    /// Writes every file under `dir` (created if missing), replacing its
    /// `component/` directory: nothing of an earlier package's component
    /// stays to be packed. Returns how many files it wrote.
    pub fn write(&self, dir: &Path) -> Result<usize> {
        let component = dir.join("component");
        if component.exists() {
            std::fs::remove_dir_all(&component)
                .with_context(|| format!("cannot replace `{}`", component.display()))?;
        }
        write_files(
            dir,
            self.files.iter().map(|(p, d)| (p.as_str(), d.as_slice())),
        )
    }

    /// The bytes of every file, together.
    pub fn size(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }
}

/// Writes files (path relative to `dir`, bytes) under `dir`, creating
/// directories as needed. Returns how many.
pub(crate) fn write_files<'a>(
    dir: &Path,
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<usize> {
    let mut n = 0;
    for (path, data) in files {
        let dest = dir.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        std::fs::write(&dest, data)
            .with_context(|| format!("cannot write `{}`", dest.display()))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_carries_sinews_version_and_the_transpiled_component() {
        let version = env!("CARGO_PKG_VERSION");
        let manifest: serde_json::Value = serde_json::from_str(SOURCES[0].1).unwrap();
        assert_eq!(
            manifest["version"], version,
            "packages/sinew-core/package.json"
        );
        let index = SOURCES[2].1;
        assert!(
            index.contains(&format!("export const version = '{version}';")),
            "packages/sinew-core/index.js states the version"
        );
        let p = Package::new().unwrap();
        for f in [
            "package.json",
            "index.js",
            "index.d.ts",
            "README.md",
            "component/sinew.js",
            "component/sinew.d.ts",
        ] {
            assert!(p.files.contains_key(f), "{f}");
        }
        assert!(p.modules.contains(&"sinew.core.wasm".to_string()));
        // Every file the manifest lists is in the package.
        for listed in manifest["files"].as_array().unwrap() {
            let listed = listed.as_str().unwrap();
            assert!(
                p.files.keys().any(|k| k == listed || k.starts_with(listed)),
                "{listed}"
            );
        }
    }
}
