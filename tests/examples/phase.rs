//! One load + analyze of a generated spec of N nodes (for instruction counts
//! under callgrind): cargo run --release -p sinew-tests --example phase N
//! (with a third argument R, R runs of each, and the fastest times).
fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let text = serde_json::to_string(&sinew_tests::generate::large_spec(n)).unwrap();
    let (mut load, mut analyze) = (std::time::Duration::MAX, std::time::Duration::MAX);
    let mut level = None;
    for _ in 0..runs.max(1) {
        let t = std::time::Instant::now();
        let loaded = sinew_core::spec::load(&text);
        load = load.min(t.elapsed());
        let t = std::time::Instant::now();
        let report = sinew_core::risk::analyze(&loaded);
        analyze = analyze.min(t.elapsed());
        level = Some(report.level);
    }
    println!("{n} nodes: {level:?}; fastest of {runs}: load {load:.1?}, analyze {analyze:.2?}");
}
