//! One load + analyze of a generated spec of N nodes (for instruction counts
//! under callgrind): cargo run --release -p sinew-tests --example phase N
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let text = serde_json::to_string(&sinew_tests::generate::large_spec(n)).unwrap();
    let loaded = sinew_core::spec::load(&text);
    let report = sinew_core::risk::analyze(&loaded);
    println!("{n} nodes: {:?}", report.level);
}
