//! The modules of the core form layers: no module imports (through
//! `crate::…`) a module that imports it back, directly or through others.
//! A submodule (`spec/check.rs`) counts as part of its top-level module
//! (`spec`). The test reads the sources, so it fails the moment a cycle
//! appears, and says which modules form it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`lib` for lib.rs).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a source text names as `crate::name` (also inside
/// `use crate::{a, b::c}`), comments and tests' `use` lines included: a
/// cycle through a test module is still a cycle of the crate.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn core_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(&src, f);
        let text = std::fs::read_to_string(f).unwrap();
        let deps = graph.entry(m.clone()).or_default();
        for d in imports(&text) {
            if d != m {
                deps.insert(d);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    // Every cycle, found as a strongly connected component of more than
    // one module.
    let mut cycles = Vec::new();
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        modules.iter().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    for m in &modules {
        if done.contains(m) {
            continue;
        }
        let component: Vec<&String> = modules
            .iter()
            .filter(|o| *o == m || (reachable[m].contains(*o) && reachable[*o].contains(m)))
            .collect();
        if component.len() > 1 {
            let names: Vec<String> = component
                .iter()
                .map(|c| {
                    let inside: Vec<&String> =
                        graph[*c].iter().filter(|d| component.contains(d)).collect();
                    format!("{c} -> {inside:?}")
                })
                .collect();
            cycles.push(names.join("; "));
        }
        done.extend(component.into_iter().cloned());
    }
    assert!(
        cycles.is_empty(),
        "import cycles between the core's modules:\n{}",
        cycles.join("\n")
    );
}
