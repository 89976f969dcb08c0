//! The error codes `docs/contract.md` lists are the ones the executor
//! answers with, each with its status: `Code` and the table are one list.

use sinew_core::problem::Code;

/// `(status, code)` of each row of the error table in `docs/contract.md`.
fn documented() -> Vec<(u16, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/contract.md"))
        .expect("docs/contract.md");
    doc.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let status = cells.next()?;
            let code = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let status: u16 = status.split_whitespace().next()?.parse().ok()?;
            Some((status, code.to_owned()))
        })
        .collect()
}

#[test]
fn every_code_is_documented_with_its_status() {
    let table = documented();
    assert!(table.len() >= 20, "the table was not found: {table:?}");
    for code in Code::ALL {
        assert!(
            table.contains(&(code.status(), code.as_str().to_owned())),
            "`{code}` ({}) is not in docs/contract.md's table",
            code.status()
        );
    }
    for (status, code) in &table {
        assert!(
            Code::ALL
                .iter()
                .any(|c| c.as_str() == code && c.status() == *status),
            "docs/contract.md lists `{code}` ({status}), which the executor never answers"
        );
    }
    let mut seen: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), Code::ALL.len(), "a code is declared twice");
}
