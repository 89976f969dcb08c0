//! N place_order calls against the in-memory store (for profiling):
//! cargo run --release -p sinew-tests --example place N
use serde_json::json;
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Auth, Request, execute};
use sinew_core::ports::memory::{FixedClock, MemoryStorage};
use sinew_core::ports::script::ScriptedExternal;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let spec =
        std::fs::read_to_string(sinew_tests::root().join("specs/examples/shop.json")).unwrap();
    let bundle = Bundle::load(&spec).unwrap();
    let mut storage = MemoryStorage::default();
    let product = "00000000-0000-4000-8000-000000000001";
    let row = json!({"id": product, "sku": "TEA", "name": "Tea", "price_cents": 450, "stock": 1_000_000_000});
    storage
        .seed(
            "Product",
            bundle
                .complete_row("Product", row.as_object().unwrap(), 0)
                .unwrap(),
        )
        .unwrap();
    let mut clock = FixedClock::new(1_767_225_600_000);
    let mut external = ScriptedExternal::default();
    let mut ok = 0;
    for i in 0..n {
        let r = Request {
            tool: "place_order".into(),
            input: json!({"product": product, "quantity": 1}),
            auth: Some(Auth {
                sub: format!("c{i}"),
                roles: vec!["customer".into()],
                claims: json!({}),
            }),
            id: format!("po-{i}"),
            idempotency_key: Some(format!("k-{i}")),
            scheduled: None,
        };
        ok += usize::from(
            execute(&bundle, &r, &mut storage, &mut clock, &mut external).status == 200,
        );
    }
    println!("{ok}/{n} ok");
}
