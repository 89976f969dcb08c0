//! The scenario target that deploys for real: each scenario gets a fresh
//! Postgres database, a `sinew serve` (the component in wasmtime) on a
//! loopback port, and a fake provider for its externals; requests go over
//! HTTP with signed tokens, and state and audit are read back with SQL.

use crate::pg::{Cluster, Fake, Http, Options, Reply, SECRET, Server, mint};
use crate::scenario::{Scenario, Target};
use serde_json::{Map, Value, json};
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Request, Response};
use sinew_core::ports::Row;
use sinew_host::pg::schema::Schema;
use sinew_host::runtime::storage::StorageBackend;
use std::collections::HashMap;
use std::sync::Arc;

struct Running {
    server: Server,
    /// The scenario's database, for reading state and audit back.
    db: tokio_postgres::Client,
    spec: sinew_core::spec::Spec,
    _fake: Fake,
    _dir: TempSpec,
}

struct TempSpec(std::path::PathBuf);

impl Drop for TempSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Scenarios over HTTP against Postgres.
pub struct HttpPg {
    cluster: Arc<Cluster>,
    rt: tokio::runtime::Runtime,
    http: Http,
    running: Option<Running>,
    n: u32,
}

impl HttpPg {
    /// A target on a cluster.
    pub fn new(cluster: Arc<Cluster>) -> HttpPg {
        HttpPg {
            cluster,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
            http: Http::default(),
            running: None,
            n: 0,
        }
    }

    fn running(&self) -> Result<&Running, String> {
        self.running
            .as_ref()
            .ok_or_else(|| "not started".to_owned())
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.server.stop());
        }
    }
}

impl Drop for HttpPg {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reply(v: &Value) -> Result<Reply, String> {
    let Some((k, v)) = v.as_object().and_then(|m| m.iter().next()) else {
        return Err(format!("bad scripted answer {v}"));
    };
    Ok(match k.as_str() {
        "ok" => Reply::Ok(v.clone()),
        "declined" => Reply::Declined(v.clone()),
        "failed" => Reply::Failed(v.as_str().unwrap_or("failed").to_owned()),
        other => return Err(format!("unknown scripted answer `{other}`")),
    })
}

impl Target for HttpPg {
    fn start(&mut self, scenario: &Scenario) -> Result<(), String> {
        self.stop();
        self.n += 1;
        let bundle = Bundle::load(&scenario.spec).map_err(|e| format!("{e:?}"))?;
        let spec = bundle.spec.clone();
        let path = std::env::temp_dir().join(format!(
            "sinew-scenario-{}-{}.json",
            std::process::id(),
            self.n
        ));
        std::fs::write(&path, &scenario.spec).map_err(|e| e.to_string())?;
        let temp = TempSpec(path.clone());
        let mut script: HashMap<String, Vec<Reply>> = HashMap::new();
        if let Value::Object(m) = &scenario.externals {
            for (op, answers) in m {
                let list = answers
                    .as_array()
                    .ok_or_else(|| format!("externals.{op} is not an array"))?;
                script.insert(
                    op.clone(),
                    list.iter().map(reply).collect::<Result<_, _>>()?,
                );
            }
        }
        let cluster = self.cluster.clone();
        let (server, db, fake) = self.rt.block_on(async {
            let url = cluster.database().await;
            let fake = Fake::start(script, false).await;
            fake.learn(&spec);
            let options = Options {
                externals: spec
                    .externals
                    .keys()
                    .map(|s| (s.clone(), fake.url(s)))
                    .collect(),
                test_hooks: true,
                // Scheduled runs come from the scenario's requests alone.
                no_cron: true,
                ..Options::default()
            };
            let server = Server::start(&path, &url, &options).await;
            // Seed through the storage backend the server uses.
            let db = sinew_host::pg::PgBackend::new(
                url.parse().map_err(|e| format!("{e}"))?,
                &spec,
                2,
                None,
            );
            for (entity, rows) in &scenario.seed {
                let tx = db
                    .begin(sinew_core::spec::Isolation::ReadCommitted, None)
                    .await
                    .map_err(|e| e.to_string())?;
                for row in rows {
                    let row = bundle
                        .complete_row(entity, row, scenario.clock_ms)
                        .map_err(|e| format!("seed: {e}"))?;
                    db.insert(tx, entity, &row)
                        .await
                        .map_err(|e| format!("seed {entity}: {e}"))?;
                }
                db.commit(tx).await.map_err(|e| e.to_string())?;
            }
            let db = crate::pg::connect_url(&url).await;
            Ok::<_, String>((server, db, fake))
        })?;
        self.running = Some(Running {
            server,
            db,
            spec,
            _fake: fake,
            _dir: temp,
        });
        Ok(())
    }

    fn send(&mut self, request: &Request, at_ms: i64) -> Result<Response, String> {
        let r = self.running()?;
        // A tool's own route; `POST /tools/{name}` for the others (and for
        // names the spec does not have).
        let rpc = format!("/tools/{}", encode(&request.tool));
        let (method, route) = r
            .spec
            .tools
            .get(&request.tool)
            .and_then(|t| t.trigger.route())
            .unwrap_or(("POST", rpc.as_str()));
        let mut input = request.input.clone();
        let mut path = String::new();
        for seg in route.split('/').filter(|s| !s.is_empty()) {
            path.push('/');
            match seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|_| route != rpc)
            {
                Some(p) => {
                    let v = input
                        .as_object_mut()
                        .and_then(|m| m.shift_remove(p))
                        .ok_or_else(|| format!("no `{p}` in the input for the path"))?;
                    let text = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    path.push_str(&encode(&text));
                }
                None => path.push_str(seg),
            }
        }
        let now = sinew_core::expr::value::format_timestamp(at_ms * 1000);
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/json".into()),
            ("x-sinew-test-now".into(), now),
            ("x-sinew-test-request-id".into(), request.id.clone()),
        ];
        if let Some(auth) = &request.auth {
            let extra: Map<String, Value> = auth.claims.as_object().cloned().unwrap_or_default();
            let roles: Vec<&str> = auth.roles.iter().map(String::as_str).collect();
            let token = mint(SECRET, &auth.sub, &roles, &extra);
            headers.push(("authorization".into(), format!("Bearer {token}")));
        }
        if let Some(k) = &request.idempotency_key {
            headers.push(("idempotency-key".into(), k.clone()));
        }
        if let Some(at) = &request.scheduled {
            headers.push(("x-sinew-test-scheduled".into(), at.clone()));
        }
        let url = format!("{}{path}", r.server.base);
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let answer = self
            .rt
            .block_on(self.http.send(method, &url, &h, input.to_string()));
        let audit = self.rt.block_on(async {
            // The server's sequencer chains the entry shortly after the
            // commit; the test reads it at once.
            sinew_host::pg::sequencer::catch_up(&r.db)
                .await
                .map_err(|e| format!("{e:#}"))?;
            r.db.query_opt(
                "SELECT entry FROM sinew_audit WHERE execution = $1 AND kind = 'final' \
                     ORDER BY seq DESC LIMIT 1",
                &[&request.id],
            )
            .await
            .map_err(|e| e.to_string())
        })?;
        let audit = audit
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        Ok(Response {
            status: answer.status,
            body: answer.body,
            audit,
        })
    }

    fn rows(&mut self, entity: &str) -> Result<Vec<Row>, String> {
        let r = self.running()?;
        let schema = Schema::of(&r.spec);
        let table = schema
            .table(entity)
            .ok_or_else(|| format!("no entity `{entity}`"))?;
        let sql = format!("SELECT {} FROM {} ORDER BY \"id\"", table.select, table.sql);
        self.rt.block_on(async {
            let rows = r.db.query(&sql, &[]).await.map_err(|e| e.to_string())?;
            Ok(rows.iter().map(|row| table.row(row)).collect())
        })
    }

    fn audit(&mut self) -> Result<Vec<Value>, String> {
        let r = self.running()?;
        self.rt.block_on(async {
            sinew_host::pg::sequencer::catch_up(&r.db)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let rows =
                r.db.query("SELECT entry, hash FROM sinew_audit ORDER BY seq", &[])
                    .await
                    .map_err(|e| e.to_string())?;
            Ok(rows
                .iter()
                .map(|row| {
                    let mut v: Value =
                        serde_json::from_str(row.get::<_, &str>(0)).unwrap_or(json!({}));
                    if let Value::Object(m) = &mut v {
                        m.insert("hash".into(), json!(row.get::<_, &str>(1)));
                    }
                    v
                })
                .collect())
        })
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
