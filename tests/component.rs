//! The built component: only our own imports, size, bad input, traps, the
//! compiled-code cache.

use sinew_tests::scenario::Wasm;

#[test]
fn the_component_imports_only_sinew_interfaces() {
    let imports = component_imports(sinew_host::COMPONENT);
    assert!(!imports.is_empty());
    for i in &imports {
        assert!(
            i.starts_with("sinew:executor/"),
            "the component imports `{i}`: {imports:?}"
        );
    }
    let mut names: Vec<&str> = imports.iter().map(|s| s.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [
            "sinew:executor/clock@0.4.0",
            "sinew:executor/external@0.4.0",
            "sinew:executor/storage@0.4.0",
            "sinew:executor/types@0.4.0"
        ]
    );
    println!("component size: {} bytes", sinew_host::COMPONENT.len());
}

/// The core composed onto the in-memory world (the browser preview's and
/// the Node test's component) imports the clock and nothing else, and
/// exports the core's interfaces and the world's `memory`.
#[test]
fn the_composed_component_imports_only_the_clock() {
    assert_eq!(
        component_imports(sinew_host::COMPOSED),
        ["sinew:executor/clock@0.4.0"]
    );
    let mut exports = component_exports(sinew_host::COMPOSED);
    exports.sort();
    assert_eq!(
        exports,
        [
            "sinew:executor/executor@0.4.0",
            "sinew:executor/memory@0.4.0",
            "sinew:executor/risk@0.4.0"
        ]
    );
    println!("composed size: {} bytes", sinew_host::COMPOSED.len());
}

/// The top-level imports and exports of a component, read with wasmparser.
fn component_names(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.expect("the component parses") {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.expect("an import").name.0.to_string());
                }
            }
            wasmparser::Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.expect("an export").name.0.to_string());
                }
            }
            _ => {}
        }
    }
    (imports, exports)
}

fn component_imports(bytes: &[u8]) -> Vec<String> {
    component_names(bytes).0
}

fn component_exports(bytes: &[u8]) -> Vec<String> {
    component_names(bytes).1
}

#[test]
fn bad_bundles_are_clear_errors() {
    let mut wasm = Wasm::new(Wasm::engine());
    let cases = [
        ("{not json", "invalid-json"),
        (
            r#"{"sinew": "0.1", "name": "x", "tools": {"t": {}}}"#,
            "spec-errors",
        ),
    ];
    for (spec, code) in cases {
        let e = wasm.load(spec).unwrap_err();
        assert!(e.starts_with(code), "{spec}: {e}");
    }
    let red =
        std::fs::read_to_string(sinew_tests::root().join("specs/unsafe/raw-write.json")).unwrap();
    let e = wasm.load(&red).unwrap_err();
    assert!(e.starts_with("blocked") && e.contains("Red"), "{e}");
}
