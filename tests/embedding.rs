//! The minimal embeddings of docs/embedding.md (section 6), run: the Rust
//! one (`examples/embedding/embed.rs`, compiled into this test), the
//! JavaScript one under Node with jco, the Python one under wasmtime-py.
//! The three must print the same lines (the report's size, the bundle's
//! hash, the response, the audit chain with its hashes), and the guide
//! must show each file exactly as it is.

#[path = "../examples/embedding/embed.rs"]
mod embed;

use sinew_tests::root;
use std::process::Command;

const FILES: [&str; 3] = [
    "examples/embedding/embed.rs",
    "examples/embedding/embed.mjs",
    "examples/embedding/embed.py",
];

#[test]
fn the_guide_shows_the_embeddings_exactly() {
    let guide = std::fs::read_to_string(root().join("docs/embedding.md")).unwrap();
    for file in FILES {
        let marker = format!("<!-- {file} -->\n");
        let at = guide
            .find(&marker)
            .unwrap_or_else(|| panic!("docs/embedding.md has no `{}`", marker.trim()));
        let rest = &guide[at + marker.len()..];
        let fence = rest.find('\n').expect("a code block follows the marker");
        assert!(
            rest.starts_with("```"),
            "a code block follows the marker of {file}"
        );
        let body = &rest[fence + 1..];
        let end = body.find("\n```\n").expect("the code block ends");
        let shown = &body[..end + 1];
        let actual = std::fs::read_to_string(root().join(file)).unwrap();
        assert!(
            shown == actual,
            "docs/embedding.md shows another {file} than the file: copy the file into the guide"
        );
    }
}

#[test]
fn the_three_minimal_embeddings_run_and_agree() {
    let out = sinew_tests::conformance::dir("embedding");
    std::fs::create_dir_all(&out).unwrap();
    let component = out.join("sinew.composed.wasm");
    std::fs::write(&component, sinew_host::COMPOSED).unwrap();
    let spec = root().join("specs/examples/shop.json");

    let rust = embed::run(
        component.to_str().unwrap(),
        &std::fs::read_to_string(&spec).unwrap(),
    )
    .unwrap()
    .join("\n")
        + "\n";

    // Node resolves jco from next to the script: tests/node's packages.
    let node_modules = sinew_tests::node_modules();
    let script = out.join("embed.mjs");
    std::fs::copy(root().join(FILES[1]), &script).unwrap();
    let link = out.join("node_modules");
    if !link.exists() {
        std::os::unix::fs::symlink(&node_modules, &link).unwrap();
    }
    let js = output(Command::new("node").arg(&script).arg(&component).arg(&spec));

    let python = output(
        Command::new(sinew_tests::python())
            .arg(root().join(FILES[2]))
            .arg(&component)
            .arg(&spec),
    );

    println!("{rust}");
    assert!(rust.contains("\n200 {\"products\":[{"), "{rust}");
    assert!(rust.contains("\"hash\":\""), "{rust}");
    assert_eq!(js, rust, "JavaScript and Rust print the same");
    assert_eq!(python, rust, "Python and Rust print the same");
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the runtime runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
