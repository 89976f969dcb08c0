//! The browser risk preview ("studio"): a static page that runs the core's
//! WebAssembly component in the browser, so a spec is judged (and
//! simulated) in the page, on every edit, without being sent anywhere.
//!
//! The page's sources are `web/` (embedded here at compile time); the
//! component is the one this binary runs, composed onto the in-memory
//! world (the Rust in-memory storage and scripted externals, as a component
//! of their own: [`crate::COMPOSED`]), as the npm package `sinew-core`
//! ([`crate::npm`]) carries it, transpiled by jco's code generator when the
//! studio is first asked for: the page runs on the package's API, the same
//! core and the same store as `sinew serve` and `sinew run`, no second
//! implementation.
//! `sinew preview` serves it at `/`, `sinew serve` at `/studio/`, and
//! `sinew preview --export DIR` writes it out for any static host.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

/// The page's own files, as written in `web/`.
const PAGE: &[(&str, &str)] = &[
    ("index.html", include_str!("../../web/index.html")),
    ("style.css", include_str!("../../web/style.css")),
    ("src/app.mjs", include_str!("../../web/src/app.mjs")),
    ("src/boot.mjs", include_str!("../../web/src/boot.mjs")),
    ("src/flow.mjs", include_str!("../../web/src/flow.mjs")),
    ("src/presets.mjs", include_str!("../../web/src/presets.mjs")),
    ("src/report.mjs", include_str!("../../web/src/report.mjs")),
    (
        "src/simulate.mjs",
        include_str!("../../web/src/simulate.mjs"),
    ),
    ("src/text.mjs", include_str!("../../web/src/text.mjs")),
    (
        "vendor/codemirror.js",
        include_str!("../../web/vendor/codemirror.js"),
    ),
];

/// The example specs the page offers.
const EXAMPLES: &[(&str, &str)] = &[
    ("shop", include_str!("../../specs/examples/shop.json")),
    ("bank", include_str!("../../specs/examples/bank.json")),
    ("booking", include_str!("../../specs/examples/booking.json")),
    ("clinic", include_str!("../../specs/examples/clinic.json")),
];

/// The spec the page opens with.
#[derive(Debug, Clone)]
pub struct Startup {
    /// Its name (the file name, or the example's).
    pub name: String,
    /// Its text.
    pub text: String,
}

impl Startup {
    /// The shop example.
    pub fn default_example() -> Startup {
        Startup {
            name: "shop.json".into(),
            text: EXAMPLES[0].1.into(),
        }
    }

    /// A spec file.
    pub fn read(path: &Path) -> Result<Startup> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        Ok(Startup::named(path, text))
    }

    /// A spec's text, named after its file.
    pub fn named(path: &Path, text: String) -> Startup {
        let name = path
            .file_name()
            .map_or_else(|| "spec.json".into(), |n| n.to_string_lossy().into_owned());
        Startup { name, text }
    }
}

/// Every file of the page, in memory.
pub struct Studio {
    files: BTreeMap<String, (&'static str, Bytes)>,
    /// How long transpiling the component took.
    pub transpile_ms: f64,
}

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

impl Studio {
    /// The page, with the component transpiled and `startup` as the spec it
    /// opens with.
    pub fn new(startup: &Startup) -> Result<Studio> {
        let started = Instant::now();
        let package = crate::npm::Package::new()?;
        let transpile_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut files = BTreeMap::new();
        // The npm package `sinew-core`, as `sinew component --npm` writes
        // it: the page runs on its API. (Its TypeScript types and
        // package.json are for npm, not for the page.)
        for (path, data) in package.files {
            if path.ends_with(".ts") || !(path.starts_with("component/") || path == "index.js") {
                continue;
            }
            let path = format!("sinew-core/{path}");
            files.insert(path.clone(), (mime(&path), Bytes::from(data)));
        }
        let modules = package.modules;
        for (path, text) in PAGE {
            let body = if *path == "index.html" {
                // The core modules are preloaded first: compiling them is
                // most of the page's start-up.
                let links: String = modules
                    .iter()
                    .map(|m| {
                        format!(
                            "<link rel=\"preload\" href=\"sinew-core/component/{m}\" as=\"fetch\" \
                             crossorigin=\"anonymous\" data-core-module=\"{m}\">\n  "
                        )
                    })
                    .collect();
                let marker =
                    "<!-- sinew: the component's core modules (filled in by the server) -->";
                Bytes::from(text.replacen(marker, links.trim_end(), 1))
            } else {
                Bytes::from_static(text.as_bytes())
            };
            files.insert((*path).to_string(), (mime(path), body));
        }
        let examples: serde_json::Map<String, serde_json::Value> = EXAMPLES
            .iter()
            .map(|(n, t)| ((*n).to_string(), serde_json::Value::from(*t)))
            .collect();
        let manifest = serde_json::json!({
            "component": {
                "hash": format!("sha256:{}", crate::COMPOSED_SHA256),
                "modules": modules,
            },
            "version": env!("CARGO_PKG_VERSION"),
            "startup": {"name": startup.name, "text": startup.text},
            "examples": examples,
        });
        files.insert(
            "manifest.json".into(),
            (mime("x.json"), Bytes::from(manifest.to_string())),
        );
        Ok(Studio {
            files,
            transpile_ms,
        })
    }

    /// The answer to `GET`/`HEAD` of `path`, relative to where the page is
    /// mounted (`""` is the page). `None` for anything else.
    pub fn response(&self, method: &Method, path: &str) -> Option<hyper::Response<Full<Bytes>>> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let path = if path.is_empty() { "index.html" } else { path };
        let (mime, body) = self.files.get(path)?;
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            body.clone()
        };
        let mut r = hyper::Response::new(Full::new(body));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // The page talks to nobody but where it came from: the spec never
        // leaves the browser. CodeMirror writes its styles inline.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
                 style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                 connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
        );
        Some(r)
    }

    /// Writes every file under `dir`, for a static host.
    pub fn export(&self, dir: &Path) -> Result<usize> {
        crate::npm::write_files(
            dir,
            self.files
                .iter()
                .map(|(p, (_, b))| (p.as_str(), b.as_ref())),
        )
    }

    /// The paths it serves, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }
}

/// Edit a spec in the browser and see its risk as you type
///
/// The page shows the risk report, applies fixes, draws flows and simulates
/// calls, all computed in the page by the same component `sinew serve`
/// runs. It is a static page served on 127.0.0.1; the spec never leaves the
/// browser.
///
/// Examples:
///   sinew preview                          # the shop example, port 8700
///   sinew preview --port 9000 my-spec.json
///   sinew preview --export site/           # write the page for a static host
#[derive(clap::Args, Debug, Clone)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The spec the page opens with (default: the shop example).
    pub spec: Option<PathBuf>,
    /// The port (0 picks a free one).
    #[arg(long, default_value_t = 8700)]
    pub port: u16,
    /// The address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub listen: IpAddr,
    /// Instead of serving, write the page's files into this directory.
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
}

/// `sinew preview`.
pub fn run(args: &Args) -> Result<u8> {
    let startup = match &args.spec {
        Some(p) => Startup::read(p)?,
        None => Startup::default_example(),
    };
    let studio = Studio::new(&startup)?;
    if let Some(dir) = &args.export {
        let n = studio.export(dir)?;
        println!(
            "wrote {n} files into {} (serve the directory from any static host)",
            dir.display()
        );
        return Ok(0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(studio, SocketAddr::new(args.listen, args.port)))
}

async fn serve(studio: Studio, addr: SocketAddr) -> Result<u8> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    println!(
        "sinew preview on http://{local}/ (component transpiled in {:.0} ms; Ctrl-C stops)",
        studio.transpile_ms
    );
    let studio = std::sync::Arc::new(studio);
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let studio = studio.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let studio = studio.clone();
                        async move {
                            let path = req.uri().path().trim_start_matches('/');
                            let r = studio.response(req.method(), path).unwrap_or_else(|| {
                                let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"not found\n")));
                                *r.status_mut() = StatusCode::NOT_FOUND;
                                r
                            });
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(30))
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = &mut stop => return Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_the_transpiled_component() {
        let studio = Studio::new(&Startup::default_example()).unwrap();
        let paths: Vec<&str> = studio.paths().collect();
        let (_, index) = &studio.files["index.html"];
        let index = std::str::from_utf8(index).unwrap();
        assert!(
            index.contains(r#"data-core-module="sinew.core.wasm""#),
            "{index}"
        );
        for p in [
            "index.html",
            "manifest.json",
            "sinew-core/index.js",
            "sinew-core/component/sinew.js",
        ] {
            assert!(paths.contains(&p), "{p} in {paths:?}");
        }
        assert!(paths.iter().any(|p| p.ends_with(".core.wasm")));
        let r = studio.response(&Method::GET, "").unwrap();
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let wasm = studio
            .response(&Method::GET, "sinew-core/component/sinew.core.wasm")
            .unwrap();
        assert_eq!(wasm.headers()[header::CONTENT_TYPE], "application/wasm");
        assert!(studio.response(&Method::POST, "").is_none());
        assert!(studio.response(&Method::GET, "../Cargo.toml").is_none());
        let (_, manifest) = &studio.files["manifest.json"];
        let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        assert_eq!(m["startup"]["name"], "shop.json");
        assert!(m["examples"]["bank"].as_str().unwrap().contains("transfer"));
        assert!(
            m["component"]["modules"]
                .as_array()
                .unwrap()
                .contains(&"sinew.core.wasm".into())
        );
    }
}
