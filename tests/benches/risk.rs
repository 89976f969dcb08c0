//! Load + analyze of generated specs of 1 000, 10 000 and 100 000 flow
//! nodes. Prints the median of several runs and the growth ratios.
//!
//! cargo bench -p sinew-tests --bench risk

use sinew_core::{risk, spec};

/// The allocator the `sinew` binary ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sinew_tests::generate::large_spec;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let sizes = [1_000usize, 10_000, 100_000];
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>12} {:>14}",
        "nodes", "bytes", "parse ms", "load ms", "analyze ms", "analyze µs/node"
    );
    let mut prev: Option<(usize, f64)> = None;
    let mut rows = Vec::new();
    for n in sizes {
        let text = serde_json::to_string(&large_spec(n)).expect("serializes");
        let runs = if n >= 100_000 { 5 } else { 21 };
        let (mut parse, mut load, mut analyze) = (Vec::new(), Vec::new(), Vec::new());
        let mut level = risk::Level::Invalid;
        for _ in 0..runs {
            let t = Instant::now();
            let value = spec::source::parse(&text).expect("parses");
            parse.push(t.elapsed());
            let t = Instant::now();
            let loaded = spec::load_value(value);
            load.push(t.elapsed());
            let t = Instant::now();
            let report = risk::analyze(&loaded);
            analyze.push(t.elapsed());
            level = report.level;
        }
        assert_eq!(level, risk::Level::Green);
        let (p, l, a) = (median(parse), median(load), median(analyze));
        let ams = a.as_secs_f64() * 1e3;
        println!(
            "{n:>8} {:>10} {:>12.2} {:>12.2} {:>12.2} {:>14.3}",
            text.len(),
            p.as_secs_f64() * 1e3,
            l.as_secs_f64() * 1e3,
            ams,
            a.as_secs_f64() * 1e6 / n as f64
        );
        if let Some((pn, pms)) = prev {
            rows.push(format!(
                "analyze {pn} → {n} nodes: ×{:.1} time for ×{} nodes",
                ams / pms,
                n / pn
            ));
        }
        prev = Some((n, ams));
    }
    for r in rows {
        println!("{r}");
    }
    println!("target: 10 000 nodes analyzed in under 10 ms, linear growth");
}
