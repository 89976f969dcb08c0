//! The studio (browser risk preview) end to end: the real `sinew preview`
//! serves the page, and `web/e2e/e2e.mjs` drives it in the machine's
//! headless Chromium with playwright-core (installed from `web/`'s
//! lockfile when missing; the browser is never downloaded).
//!
//! Screenshots go to `target/studio-e2e/`. Without Chromium the test fails
//! under CI and is skipped, saying so, elsewhere.

use sinew_tests::root;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Preview(Child);

impl Drop for Preview {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> Option<String> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(p);
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
}

/// Chromium, or `None` (the test is skipped, saying so) outside CI; under
/// CI a missing Chromium fails the test.
fn browser_or_skip() -> Option<String> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is missing (CI installs Debian's `chromium`)"
        );
        eprintln!("skipped: no Chromium at /usr/bin/chromium (apt-get install chromium)");
    }
    found
}

fn npm_install(dir: &std::path::Path) {
    // Once per test binary: two tests installing at once would each see
    // the other's half-written node_modules.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let npm = |args: &[&str]| {
        Command::new("npm")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("npm runs (install Node.js and npm)")
    };
    if !npm(&["ci", "--no-audit", "--no-fund"]).success() {
        assert!(
            npm(&["install", "--no-audit", "--no-fund"]).success(),
            "`npm install` in web/ failed"
        );
    }
}

#[test]
fn the_studio_works_in_headless_chromium() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let web = root().join("web");
    npm_install(&web);

    let mut child = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["preview", "--port", "0"])
        .arg(root().join("specs/examples/shop.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starts sinew preview");
    let stdout = child.stdout.take().unwrap();
    let preview = Preview(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    // "sinew preview on http://127.0.0.1:PORT/ (…)"
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in `{line}`"))
        .to_owned();
    println!("{}", line.trim());

    let out = root().join("target/studio-e2e");
    let output = Command::new("node")
        .arg(web.join("e2e/e2e.mjs"))
        .arg(&url)
        .arg(&out)
        .env("CHROMIUM", browser)
        .output()
        .expect("node runs (install Node.js)");
    drop(preview);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the studio's end-to-end run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    for shot in ["studio-green.png", "studio-red.png", "studio-flow.png"] {
        assert!(out.join(shot).exists(), "{shot} was not saved");
    }
}

/// `sinew preview --export` writes a static site that holds the same files
/// the server answers with.
#[test]
fn the_page_exports_for_a_static_host() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["preview", "--export"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for f in [
        "index.html",
        "manifest.json",
        "src/app.mjs",
        "vendor/codemirror.js",
        "sinew-core/index.js",
        "sinew-core/component/sinew.js",
        "sinew-core/component/sinew.core.wasm",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["startup"]["name"], "shop.json");
    // A spec that cannot be read is a clear error, not a page.
    let out = Command::new(env!("CARGO_BIN_EXE_sinew"))
        .args(["preview", "--export"])
        .arg(dir.path())
        .arg("no/such/spec.json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `no/such/spec.json`"));
}

/// A real browser's CORS: Chromium, on a page of another origin, calls
/// `sinew serve` (on Postgres); its preflights are answered from the
/// spec's `cors` without running a tool, the allowed call runs and is
/// readable, the refused one never reaches its tool.
#[test]
fn a_browser_on_another_origin_gets_what_cors_allows() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let web = root().join("web");
    npm_install(&web);
    // The page's origin: a blank page on another loopback port.
    let page = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = format!("http://{}", page.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in page.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "<!doctype html><title>app</title>";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let pg = sinew_tests::pg::Cluster::start();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("specs/examples/shop.json")).unwrap(),
    )
    .unwrap();
    spec["cors"] = serde_json::json!({"origins": [app],
                                      "tools": ["list_products", "create_product"]});
    let path = dir.path().join("shop-cors.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    let server = sinew_tests::process::Proc::start(
        env!("CARGO_BIN_EXE_sinew"),
        &path,
        &[("DATABASE_URL", url.as_str())],
        dir.path(),
    );
    let token = sinew_tests::pg::token("sam", &["staff"]);
    let output = Command::new("node")
        .arg(web.join("e2e/cors.mjs"))
        .arg(&app)
        .arg(&server.base)
        .arg(&token)
        .env("CHROMIUM", browser)
        .output()
        .expect("node runs (install Node.js)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(got["origin"], app.as_str());
    assert_eq!(got["allowed"]["status"], 201, "{got}\n{}", server.log());
    assert!(got["allowed"]["body"]["product"].is_string(), "{got}");
    assert!(got["allowed"]["requestId"].is_string(), "exposed: {got}");
    assert_eq!(got["simple"]["status"], 200, "{got}");
    assert!(
        got["refused"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{got}"
    );
    // The server saw the browser's preflights, and never ran the refused
    // tool.
    // (A line is written as its answer goes out: wait for the last.)
    let started = std::time::Instant::now();
    while !server.log().contains("OPTIONS /orders 403")
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = server.log();
    assert!(log.contains("OPTIONS /products 204"), "{log}");
    assert!(log.contains("OPTIONS /orders 403"), "{log}");
    assert!(!log.contains("POST /orders"), "{log}");
    assert!(log.contains("POST /products 201"), "{log}");
}
