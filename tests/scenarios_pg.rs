//! The scenario corpus, unchanged, against Postgres through HTTP: each
//! scenario on a fresh database behind a real `sinew serve`.

use sinew_tests::http_target::HttpPg;
use sinew_tests::pg::Cluster;
use sinew_tests::scenario::{Scenario, corpus, run};
use std::sync::Arc;

#[test]
fn corpus_passes_over_http_on_postgres() {
    let cluster = Arc::new(Cluster::start());
    let mut target = HttpPg::new(cluster.clone());
    let files = corpus();
    let only = std::env::var("SCENARIO").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        ran += 1;
        let result = Scenario::read(path).and_then(|sc| run(&sc, &mut target));
        if let Err(e) = result {
            failures.push(format!("--- {name}\n{e}"));
        }
    }
    drop(target);
    assert!(
        failures.is_empty(),
        "{} of {ran} scenarios fail on Postgres:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
