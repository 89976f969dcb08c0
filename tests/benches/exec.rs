//! The interpreter natively against the in-memory store: one `place_order`
//! and one `transfer` per iteration, and the per-request cost with specs of
//! 1 and 500 tools. Prints medians of batches.
//!
//! cargo bench -p sinew-tests --bench exec

use serde_json::{Value, json};
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Auth, Request, execute};
use sinew_core::ports::memory::{FixedClock, MemoryStorage};
use sinew_core::ports::script::ScriptedExternal;
use sinew_tests::generate::many_tools;
use sinew_tests::root;
use std::time::Instant;

/// The allocator the `sinew` binary ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 2_000;
const BATCHES: usize = 15;

struct World {
    bundle: Bundle,
    storage: MemoryStorage,
    clock: FixedClock,
    external: ScriptedExternal,
}

impl World {
    fn new(spec: &str, seed: &[(&str, Value)]) -> World {
        let bundle = Bundle::load(spec).expect("the spec runs");
        let mut storage = MemoryStorage::default();
        for (entity, row) in seed {
            let row = bundle
                .complete_row(entity, row.as_object().expect("object"), 0)
                .expect("row");
            storage.seed(entity, row).expect("seed");
        }
        World {
            bundle,
            storage,
            clock: FixedClock::new(1_767_225_600_000),
            external: ScriptedExternal::default(),
        }
    }

    fn call(&mut self, request: &Request) -> u16 {
        execute(
            &self.bundle,
            request,
            &mut self.storage,
            &mut self.clock,
            &mut self.external,
        )
        .status
    }
}

/// Median µs per request over batches; `make(i)` builds request `i`.
fn measure(world: &mut World, expect: u16, make: impl Fn(usize) -> Request) -> f64 {
    let mut n = 0;
    for _ in 0..BATCH {
        assert_eq!(world.call(&make(n)), expect, "warm-up");
        n += 1;
    }
    let mut per = Vec::new();
    for _ in 0..BATCHES {
        let requests: Vec<Request> = (0..BATCH).map(|i| make(n + i)).collect();
        n += BATCH;
        let t = Instant::now();
        for r in &requests {
            let status = world.call(r);
            debug_assert_eq!(status, expect);
        }
        per.push(t.elapsed().as_secs_f64() * 1e6 / BATCH as f64);
    }
    per.sort_by(f64::total_cmp);
    per[per.len() / 2]
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join("specs/examples").join(name)).expect("example")
}

fn main() {
    let product = "00000000-0000-4000-8000-000000000001";
    let mut shop = World::new(
        &read("shop.json"),
        &[(
            "Product",
            json!({"id": product, "sku": "TEA", "name": "Tea", "price_cents": 450, "stock": i64::MAX / 2}),
        )],
    );
    // One customer per request: the shop's `order_rate` policy allows 60
    // orders a minute per customer.
    let place_order = measure(&mut shop, 200, |i| Request {
        tool: "place_order".into(),
        input: json!({"product": product, "quantity": 1}),
        auth: Some(Auth {
            sub: format!("c{i}"),
            roles: vec!["customer".into()],
            claims: json!({}),
        }),
        id: format!("po-{i}"),
        idempotency_key: Some(format!("k-{i}")),
    });

    let (a, b) = (
        "00000000-0000-4000-8000-0000000000a1",
        "00000000-0000-4000-8000-0000000000b2",
    );
    let mut bank = World::new(
        &read("bank.json"),
        &[
            (
                "Account",
                json!({"id": a, "holder": "alice", "name": "main", "currency": "EUR", "balance": 1_000_000_000_000i64}),
            ),
            (
                "Account",
                json!({"id": b, "holder": "alice", "name": "savings", "currency": "EUR", "balance": 0}),
            ),
        ],
    );
    // Tellers (exempt from ownership), one per request: the bank's
    // `transfer_rate` policy allows 20 transfers a minute per caller.
    let transfer = measure(&mut bank, 201, |i| Request {
        tool: "transfer".into(),
        input: json!({"from_account": a, "to_account": b, "amount_cents": 1}),
        auth: Some(Auth {
            sub: format!("teller{i}"),
            roles: vec!["teller".into()],
            claims: json!({}),
        }),
        id: format!("tr-{i}"),
        idempotency_key: Some(format!("k-{i}")),
    });

    let mut scaling = Vec::new();
    for tools in [1usize, 500] {
        let spec = serde_json::to_string(&many_tools(tools)).expect("spec");
        let item = "00000000-0000-4000-8000-0000000000c3";
        let mut w = World::new(
            &spec,
            &[(
                "Item",
                json!({"id": item, "sku": "X", "stock": i64::MAX / 2}),
            )],
        );
        let clerk = Some(Auth {
            sub: "clerk".into(),
            roles: vec!["clerk".into()],
            claims: json!({}),
        });
        let us = measure(&mut w, 200, |i| Request {
            tool: "tool_0".into(),
            input: json!({"id": item}),
            auth: clerk.clone(),
            id: format!("t-{i}"),
            idempotency_key: Some(format!("k-{i}")),
        });
        scaling.push((tools, spec.len(), us));
    }

    println!("interpreter + in-memory store, median of {BATCHES} batches of {BATCH} requests");
    println!("{:<34} {:>10} {:>8}", "request", "µs", "target");
    println!(
        "{:<34} {:>10.2} {:>8}",
        "place_order (shop)", place_order, "< 20"
    );
    println!("{:<34} {:>10.2} {:>8}", "transfer (bank)", transfer, "< 20");
    for (tools, bytes, us) in &scaling {
        println!(
            "{:<34} {:>10.2} {:>8}",
            format!("tool_0 of a {tools}-tool spec ({} KB)", bytes / 1024),
            us,
            "flat"
        );
    }
    if let [(_, _, one), (_, _, many)] = scaling.as_slice() {
        println!("per-request cost, 500 tools / 1 tool: ×{:.2}", many / one);
    }
}
