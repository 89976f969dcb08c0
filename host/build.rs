//! Builds the core as a WebAssembly component, so that `cargo build` and
//! `cargo test` of the host always embed the component of the current
//! sources: the core and its glue are compiled for `wasm32-unknown-unknown`
//! (a nested cargo with its own target directory), then turned into a
//! component with `wit-component`.
//!
//! The same nested build compiles the in-memory world (`core/world`: the
//! in-memory storage and the scripted externals as a component), and
//! `wac-graph` composes it onto the core: one self-contained component that
//! imports only the clock, for the browser preview and the Node test. The
//! plain core stays what the server runs (`sinew_host::COMPONENT`); the
//! composed one is `sinew_host::COMPOSED`.

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
        "core/world/src",
        "core/world/Cargo.toml",
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
            "--package",
            "sinew-world",
            "--target",
            "wasm32-unknown-unknown",
            "--release",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        // Small and fast: whole-program LTO, no symbol names (4.0 MB).
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        // SINEW_COMPONENT_PROFILE=symbols keeps the functions' names, for
        // profiles (`SINEW_WASM_PROFILER=perfmap` then names them).
        .env(
            "CARGO_PROFILE_RELEASE_STRIP",
            if std::env::var_os("SINEW_COMPONENT_PROFILE").is_some_and(|v| v == "symbols") {
                "none"
            } else {
                "symbols"
            },
        )
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
    let modules = target_dir.join("wasm32-unknown-unknown/release");
    let core = componentize(&modules.join("sinew_component.wasm"));
    let world = componentize(&modules.join("sinew_world.wasm"));
    let composed = compose(&core, &world)
        .unwrap_or_else(|e| panic!("composing the core onto the in-memory world failed: {e:#}"));
    emit(&out, "COMPONENT", "sinew.component.wasm", &core);
    emit(&out, "COMPOSED", "sinew.composed.wasm", &composed);
}

/// A core module built by the nested cargo, as a component.
fn componentize(module_path: &Path) -> Vec<u8> {
    let module = std::fs::read(module_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", module_path.display()));
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("the module carries its WIT")
        .validate(true)
        .encode()
        .unwrap_or_else(|e| panic!("{} becomes a component: {e:#}", module_path.display()))
}

/// The core instantiated with the world's exports for every import the
/// world provides (`types`, `storage`, `external`): what remains imported
/// is the clock. Exports the core's exports and the world's others
/// (`memory`).
fn compose(core: &[u8], world: &[u8]) -> anyhow::Result<Vec<u8>> {
    use wac_graph::types::Package;
    use wac_graph::{CompositionGraph, EncodeOptions};

    let mut graph = CompositionGraph::new();
    let package = Package::from_bytes("sinew:core", None, core.to_vec(), graph.types_mut())?;
    let core = graph.register_package(package)?;
    let package = Package::from_bytes("sinew:world", None, world.to_vec(), graph.types_mut())?;
    let world = graph.register_package(package)?;
    let names = |id: wac_graph::PackageId, imports: bool| -> Vec<String> {
        let ty = &graph.types()[graph[id].ty()];
        let map = if imports { &ty.imports } else { &ty.exports };
        map.keys().cloned().collect()
    };
    let (core_imports, core_exports) = (names(core, true), names(core, false));
    let world_exports = names(world, false);

    let world_instance = graph.instantiate(world);
    let core_instance = graph.instantiate(core);
    for name in &world_exports {
        let export = graph.alias_instance_export(world_instance, name)?;
        if core_imports.contains(name) {
            graph.set_instantiation_argument(core_instance, name, export)?;
        } else {
            graph.export(export, name)?;
        }
    }
    for name in &core_exports {
        let export = graph.alias_instance_export(core_instance, name)?;
        graph.export(export, name)?;
    }
    Ok(graph.encode(EncodeOptions::default())?)
}

/// Writes a component into `OUT_DIR` and tells the host where it is
/// (`SINEW_<NAME>_PATH`) and its hash (`SINEW_<NAME>_SHA256`, computed once
/// here rather than at every start).
fn emit(out: &Path, name: &str, file: &str, bytes: &[u8]) {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=SINEW_{name}_SHA256={hash}");
    let dest = out.join(file);
    std::fs::write(&dest, bytes).expect("writes the component");
    println!("cargo:rustc-env=SINEW_{name}_PATH={}", dest.display());
}
