//! Builds the core as a WebAssembly component, so that `cargo build` and
//! `cargo test` of the host always embed the component of the current
//! sources: the core and its glue are compiled for `wasm32-unknown-unknown`
//! (a nested cargo with its own target directory), then turned into a
//! component with `wit-component`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn watch(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    for p in [
        "core/src",
        "core/Cargo.toml",
        "core/component/src",
        "core/component/Cargo.toml",
        "wit",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        watch(&root.join(p));
    }
    println!("cargo:rerun-if-env-changed=SINEW_COMPONENT_PROFILE");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_dir = root.join("target").join("component");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--package",
            "sinew-component",
            "--target",
            "wasm32-unknown-unknown",
            "--release",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        // Small and fast: whole-program LTO, no symbol names (4.0 MB).
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        // Settings of the outer build that must not leak into the guest's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("CARGO_PRIMARY_PACKAGE");
    if std::env::var_os("CARGO_NET_OFFLINE").is_some() || std::env::args().any(|a| a == "--offline")
    {
        cmd.arg("--offline");
    }
    let status = cmd.status().expect("runs cargo for the component");
    if !status.success() {
        panic!(
            "building the core for wasm32-unknown-unknown failed; is the target installed? \
             (`rustup target add wasm32-unknown-unknown`)"
        );
    }
    let module_path = target_dir.join("wasm32-unknown-unknown/release/sinew_component.wasm");
    let module = std::fs::read(&module_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", module_path.display()));
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("the module carries its WIT")
        .validate(true)
        .encode()
        .expect("the module becomes a component");
    let dest = out.join("sinew.component.wasm");
    // Its hash, computed once here rather than at every start.
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(&component)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=SINEW_COMPONENT_SHA256={hash}");
    std::fs::write(&dest, component).expect("writes the component");
    println!("cargo:rustc-env=SINEW_COMPONENT_PATH={}", dest.display());
}
