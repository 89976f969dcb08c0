//! The component runtime: the compiled-code cache, traps and deadlines.

use serde_json::{Value, json};
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Auth, Request};
use sinew_core::ports::memory::MemoryStorage;
use sinew_core::ports::script::ScriptedExternal;
use sinew_host::runtime::clock::{ClockBackend, ManualClock};
use sinew_host::runtime::external::Scripted;
use sinew_host::runtime::storage::MemoryBackend;
use sinew_host::runtime::{Backends, Engine, Executor, cache};
use sinew_tests::component_cache;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// A spec whose `scan` tool writes a marker and then reads every item, in
/// one transaction, with a 1 ms budget: it cannot finish in time.
fn spec(timeout_ms: u64) -> String {
    json!({
        "sinew": "0.1", "name": "scanner", "roles": ["ops"],
        "entities": {
            "Item": {"fields": {"label": {"type": "string"}, "blob": {"type": "string"}}},
            "Marker": {"fields": {"note": {"type": "string"}}}
        },
        "tools": {
            "scan": {
                "trigger": {"http": {"method": "POST", "path": "/scan"}},
                "auth": {"roles": ["ops"]},
                "idempotencyKey": "request.idempotencyKey",
                "limits": {"timeoutMs": timeout_ms},
                "flow": {"entry": "tx", "nodes": {
                    "tx": {"type": "transaction", "body": {"entry": "mark", "nodes": {
                        "mark": {"type": "create", "entity": "Marker", "values": {"note": "'scan started'"}, "next": "all"},
                        "all": {"type": "read", "entity": "Item", "orderBy": "label", "limit": 100000}
                    }}, "next": "done"},
                    "done": {"type": "return", "value": {"count": "size(all)"}}
                }}
            },
            "mark_then_scan": {
                "trigger": {"http": {"method": "POST", "path": "/marked-scan"}},
                "auth": {"roles": ["ops"]},
                "idempotencyKey": "request.idempotencyKey",
                "limits": {"timeoutMs": timeout_ms},
                "flow": {"entry": "first", "nodes": {
                    "first": {"type": "transaction", "body": {"entry": "mark", "nodes": {
                        "mark": {"type": "create", "entity": "Marker", "values": {"note": "'scan started'"}}
                    }}, "next": "second"},
                    "second": {"type": "transaction", "body": {"entry": "all", "nodes": {
                        "all": {"type": "read", "entity": "Item", "orderBy": "label", "limit": 100000}
                    }}, "next": "done"},
                    "done": {"type": "return", "value": {"count": "size(all)"}}
                }}
            },
            "count": {
                "trigger": {"http": {"method": "GET", "path": "/count"}},
                "auth": {"roles": ["ops"]},
                "flow": {"entry": "some", "nodes": {
                    "some": {"type": "read", "entity": "Item", "limit": 3, "next": "done"},
                    "done": {"type": "return", "value": {"count": "size(some)"}}
                }}
            }
        }
    })
    .to_string()
}

/// The start of the tests' time (2026-01-01).
const T0: i64 = 1_767_225_600_000;

/// A clock that moves one second on every reading.
struct Ticking(AtomicI64);

impl ClockBackend for Ticking {
    fn now_ms(&self) -> i64 {
        self.0.fetch_add(1000, Ordering::SeqCst)
    }
}

fn backends(spec: &str, items: usize, blob: usize) -> (Backends, MemoryBackend) {
    backends_at(spec, items, blob, Arc::new(ManualClock(T0.into())))
}

fn backends_at(
    spec: &str,
    items: usize,
    blob: usize,
    clock: Arc<dyn ClockBackend>,
) -> (Backends, MemoryBackend) {
    let bundle = Bundle::load(spec).unwrap();
    let mut s = MemoryStorage::default();
    let filler = "x".repeat(blob);
    for i in 0..items {
        let row = json!({"id": format!("00000000-0000-4000-8000-{i:012}"), "label": format!("item {i:06}"), "blob": filler});
        s.seed(
            "Item",
            bundle
                .complete_row("Item", row.as_object().unwrap(), 0)
                .unwrap(),
        )
        .unwrap();
    }
    let memory = MemoryBackend(Arc::new(Mutex::new(s)));
    let b = Backends {
        storage: Arc::new(memory.clone()),
        clock,
        external: Arc::new(Scripted(Mutex::new(ScriptedExternal::default()))),
    };
    (b, memory)
}

fn request(tool: &str, id: &str) -> Request {
    Request {
        tool: tool.into(),
        input: json!({}),
        auth: Some(Auth {
            sub: "op".into(),
            roles: vec!["ops".into()],
            claims: json!({}),
        }),
        id: id.into(),
        idempotency_key: Some(format!("key-{id}")),
        scheduled: None,
    }
}

fn finals(m: &MemoryBackend) -> Vec<Value> {
    m.0.lock()
        .unwrap()
        .audit()
        .into_iter()
        .filter(|e| e["kind"] == "final")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_execution_is_stopped_rolled_back_and_audited() {
    let engine = Engine::new(Some(&component_cache())).unwrap();
    let spec = spec(1);
    let (b, memory) = backends(&spec, 60_000, 64);
    let ex = Executor::new(engine, spec, b).await.unwrap();
    let r = ex.execute(&request("scan", "r1")).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body["code"], "deadline_exceeded");
    {
        let store = memory.0.lock().unwrap();
        assert!(
            store.rows("Marker").is_empty(),
            "the marker written before the deadline was rolled back"
        );
        assert_eq!(store.open_transactions(), 0, "no transaction is left open");
    }
    let f = finals(&memory);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["status"], 504);
    assert_eq!(f[0]["outcome"], "error");
    // The trap released the idempotency key it had claimed: the same
    // request again runs (and runs out of time again) instead of waiting
    // out an in-flight claim.
    let r = ex.execute(&request("scan", "r1")).await;
    assert_eq!(r.body["code"], "deadline_exceeded", "{}", r.body);
    assert_eq!(finals(&memory).len(), 2);
    // The next request gets a fresh instance and works.
    let r = ex.execute(&request("count", "r2")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["count"], 3);
    assert_eq!(finals(&memory).len(), 3);
}

/// A deadline after some writes committed (the first transaction commits
/// when the flow reaches the second): the answer says `committed`, and it
/// is stored for the key, so a retry replays it instead of writing the
/// marker a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_after_a_commit_is_stored_for_the_key() {
    let engine = Engine::new(Some(&component_cache())).unwrap();
    let spec = spec(300);
    let (b, memory) = backends(&spec, 60_000, 64);
    let ex = Executor::new(engine, spec, b).await.unwrap();
    let r = ex.execute(&request("mark_then_scan", "r1")).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body["code"], "deadline_exceeded");
    assert_eq!(r.body["committed"], true, "{}", r.body);
    assert_eq!(memory.0.lock().unwrap().rows("Marker").len(), 1);
    let again = ex.execute(&request("mark_then_scan", "r1")).await;
    assert_eq!((again.status, &again.body), (504, &r.body));
    assert_eq!(
        memory.0.lock().unwrap().rows("Marker").len(),
        1,
        "the retry wrote nothing"
    );
    let f = finals(&memory);
    assert_eq!(f.len(), 2);
    assert_eq!(
        (&f[0]["outcome"], &f[1]["outcome"]),
        (&json!("error"), &json!("replayed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_out_of_memory_is_an_audited_500_and_the_host_survives() {
    let engine =
        Engine::with_memory(sinew_host::COMPONENT, Some(&component_cache()), 96 << 20).unwrap();
    let spec = spec(60_000);
    // Time moves on each reading: the entry the host writes must carry the
    // time the executor gave the request (the first reading), not the time
    // of the trap, or it lands in another rate window than the request.
    let (b, memory) = backends_at(&spec, 20_000, 4_000, Arc::new(Ticking(T0.into())));
    let ex = Executor::new(engine, spec, b).await.unwrap();
    let r = ex.execute(&request("scan", "r1")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.body["code"], "internal");
    assert_eq!(
        r.body["detail"], "internal error",
        "no internals in the body"
    );
    assert!(memory.0.lock().unwrap().rows("Marker").is_empty());
    assert_eq!(memory.0.lock().unwrap().open_transactions(), 0);
    let f = finals(&memory);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["status"], 500);
    assert_eq!(f[0]["time"], "2026-01-01T00:00:00Z", "{}", f[0]);
    let took = f[0]["durationMs"].as_i64().unwrap();
    assert!(took >= 1000, "the duration runs to the trap: {}", f[0]);
    // The claimed key was released: a retry runs again (and fails the same
    // way), not a 409 for a claim nobody holds.
    let r = ex.execute(&request("scan", "r1")).await;
    assert_eq!(r.status, 500, "{}", r.body);
    let r = ex.execute(&request("count", "r2")).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_input_are_clear_errors() {
    let engine = Engine::new(Some(&component_cache())).unwrap();
    let spec = spec(1000);
    let (b, memory) = backends(&spec, 1, 1);
    let ex = Executor::new(engine, spec, b).await.unwrap();
    let mut big = request("count", "big");
    big.input = json!({"pad": "y".repeat(17 << 20)});
    let r = ex.execute(&big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["code"], "too_large");
    let r = ex.execute(&request("nope", "r3")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["code"], "unknown_tool");
    let f = finals(&memory);
    assert_eq!(f.len(), 2, "both audited");
    assert!(
        f[0]["input"]["omitted"].is_string(),
        "a huge input is not copied into the audit"
    );
    assert!(f[0]["inputHash"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn a_corrupted_cwasm_cache_is_detected_and_rebuilt() {
    let dir = std::env::temp_dir().join(format!("sinew-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Seed the cache from the shared one when present (compiling is slow).
    let shared = cache::path_for(&component_cache(), sinew_host::COMPONENT);
    let path = cache::path_for(&dir, sinew_host::COMPONENT);
    let sum = |p: &Path| p.with_extension("cwasm.crc32");
    if std::fs::copy(&shared, &path).is_ok() {
        // (A cache of an older sinew has no `.crc32`: then it is rebuilt.)
        let _ = std::fs::copy(sum(&shared), sum(&path));
    }
    // A stale file of another build is pruned when the cache is written.
    let stale = dir.join("sinew-00000000000000000000000000000000-wasmtime-48.0.8.cwasm");
    std::fs::write(&stale, b"old").unwrap();
    let _ = std::fs::remove_file(&path);
    let e = Engine::new(Some(&dir)).unwrap();
    drop(e);
    assert!(!stale.exists(), "stale cache files are pruned");
    assert!(
        Engine::new(Some(&dir)).unwrap().from_cache(),
        "a good cache is used"
    );
    // Flip bytes in the middle: the checksum no longer matches.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = Engine::new(Some(&dir)).unwrap();
    assert!(!e.from_cache(), "a corrupted file is never loaded");
    drop(e);
    assert!(
        Engine::new(Some(&dir)).unwrap().from_cache(),
        "and it was rebuilt"
    );
    // A truncated file, a missing checksum: rebuilt too.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    assert!(!Engine::new(Some(&dir)).unwrap().from_cache());
    std::fs::remove_file(sum(&path)).unwrap();
    assert!(!Engine::new(Some(&dir)).unwrap().from_cache());
    assert!(Engine::new(Some(&dir)).unwrap().from_cache());
    let _ = std::fs::remove_dir_all(&dir);
}
