//! `GET /reviews` and `POST /reviews/{id}/resolve`: the review items
//! `escalate` policies raise, for callers with a role of the spec's
//! `reviews` (the routes exist only when the spec declares it).

use super::{App, Body, Code, json, problem, respond};
use crate::pg::reviews::{Resolved, Which};
use bytes::Bytes;
use hyper::Method;
use hyper::body::Incoming;
use serde_json::Value;
use sinew_core::spec::REVIEWS_PATH;

/// Items per page at most (`limit`), and by default.
const MAX_LIMIT: i64 = 500;
const DEFAULT_LIMIT: i64 = 50;
/// A resolution's note, in characters at most.
const MAX_NOTE: usize = 2000;

/// Whether `path` is one of the review routes.
pub(super) fn is_review_path(path: &str) -> bool {
    path == REVIEWS_PATH
        || path
            .strip_prefix(REVIEWS_PATH)
            .is_some_and(|r| r.starts_with('/'))
}

fn answer(status: u16, body: &Value) -> hyper::Response<Body> {
    respond(status, "application/json", Bytes::from(body.to_string()))
}

impl App {
    /// Answers a request under `/reviews` (the spec declares `reviews`).
    pub(super) async fn review(
        &self,
        req: hyper::Request<Incoming>,
        path: &str,
        id: &str,
    ) -> hyper::Response<Body> {
        let Some(reviews) = &self.reviews else {
            return problem(Code::NotFound, "no reviews here", id);
        };
        let auth = match self.authenticate(req.headers()).await {
            Ok(Some(a)) => a,
            Ok(None) => return problem(Code::Unauthenticated, "sign in to see reviews", id),
            Err(r) => return r.response(id),
        };
        if !auth.roles.iter().any(|r| reviews.roles.contains(r)) {
            let detail = format!("reviews need one of the roles {}", reviews.roles.join(", "));
            return problem(Code::Forbidden, &detail, id);
        }
        let rest = &path[REVIEWS_PATH.len()..];
        let target = rest
            .strip_prefix('/')
            .and_then(|r| r.strip_suffix("/resolve"))
            .map(|n| n.parse::<i64>().ok().filter(|n| *n > 0));
        match (req.method(), rest, target) {
            (&Method::GET | &Method::HEAD, "" | "/", _) => self.list_reviews(&req, id).await,
            (_, "" | "/", _) => super::method_not_allowed(path, &super::get_and_head(), id),
            (&Method::POST, _, Some(Some(n))) => {
                let (parts, body) = req.into_parts();
                self.resolve(n, &parts.headers, body, &auth, id).await
            }
            (_, _, Some(Some(_))) => super::method_not_allowed(path, &["POST".into()], id),
            _ => problem(Code::NotFound, &format!("no review answers {path}"), id),
        }
    }

    /// `GET /reviews?status=open|resolved|all&after=ID&limit=N`: oldest
    /// first, `{"reviews": [...], "next": ID | null}`.
    async fn list_reviews(
        &self,
        req: &hyper::Request<Incoming>,
        id: &str,
    ) -> hyper::Response<Body> {
        let (mut which, mut after, mut limit) = (Which::Open, None, DEFAULT_LIMIT);
        let query = req.uri().query().unwrap_or_default();
        let mut seen: Vec<String> = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let bad =
                |what: &str| problem(Code::InvalidInput, &format!("`{k}` must be {what}"), id);
            // Which one a proxy in front read is not known (as for tools).
            if seen.iter().any(|s| *s == k) {
                let detail = format!("`{}` is given twice in the query", super::short_path(&k));
                return problem(Code::InvalidInput, &detail, id);
            }
            seen.push(k.clone().into_owned());
            match &*k {
                "status" => match Which::parse(&v) {
                    Some(w) => which = w,
                    None => return bad("`open`, `resolved` or `all`"),
                },
                "after" => match v.parse::<i64>() {
                    Ok(n) if n >= 0 => after = Some(n),
                    _ => return bad("a review id"),
                },
                "limit" => match v.parse::<i64>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                    _ => return bad(&format!("an integer from 1 to {MAX_LIMIT}")),
                },
                _ => {
                    return problem(
                        Code::InvalidInput,
                        &format!("unknown parameter `{k}` (status, after, limit)"),
                        id,
                    );
                }
            }
        }
        match self.db.reviews(which, after, limit).await {
            Ok((items, next)) => answer(200, &json!({"reviews": items, "next": next})),
            Err(e) => self.storage_failed(&e, id),
        }
    }

    /// `POST /reviews/{id}/resolve` with `{"note": "…"}` (optional; an
    /// empty body is no note): resolved by the caller, audited.
    async fn resolve(
        &self,
        review: i64,
        headers: &hyper::HeaderMap,
        body: Incoming,
        auth: &sinew_core::contract::Auth,
        id: &str,
    ) -> hyper::Response<Body> {
        // The body is read as a tool's is: its size, its Content-Type, its
        // JSON (a key twice, too deep) checked the same way.
        let bytes = match self.read_body(headers, body).await {
            Ok(b) => b,
            Err(r) => return r.response(id),
        };
        let note = {
            let v = match super::parse_body(headers, &bytes) {
                Ok(v) => v,
                Err(r) => return r.response(id),
            };
            let Value::Object(m) = v else {
                return problem(
                    Code::InvalidInput,
                    "the body must be `{\"note\": \"…\"}`",
                    id,
                );
            };
            if let Some(k) = m.keys().find(|k| *k != "note") {
                let detail = format!("unknown property `{k}` (only `note`)");
                return problem(Code::InvalidInput, &detail, id);
            }
            match m.get("note") {
                None | Some(Value::Null) => None,
                // (Postgres cannot store U+0000 in text: refused as in
                // any input.)
                Some(Value::String(s)) if s.contains('\0') => {
                    let detail = "`note` may not contain the NUL character (U+0000)";
                    return problem(Code::InvalidInput, detail, id);
                }
                Some(Value::String(s)) if s.chars().count() <= MAX_NOTE => Some(s.clone()),
                Some(_) => {
                    let detail =
                        format!("`note` must be a string of at most {MAX_NOTE} characters");
                    return problem(Code::InvalidInput, &detail, id);
                }
            }
        };
        let r = self
            .db
            .resolve_review(
                review,
                id,
                &auth.sub,
                &auth.roles,
                note.as_deref(),
                self.now_ms(),
            )
            .await;
        match r {
            Ok(Resolved::Done(item)) => answer(200, &item),
            Ok(Resolved::Unknown) => problem(Code::NotFound, &format!("no review {review}"), id),
            Ok(Resolved::Already(item)) => {
                let detail = format!(
                    "review {review} was resolved already, by {} at {}",
                    item["resolvedBy"].as_str().unwrap_or("?"),
                    item["resolvedAt"].as_str().unwrap_or("?")
                );
                problem(Code::Conflict, &detail, id)
            }
            Err(e) => self.storage_failed(&e, id),
        }
    }

    /// A storage failure outside a tool: 503 when the database is away,
    /// else 500, the message for the log only.
    fn storage_failed(
        &self,
        e: &sinew_core::ports::StorageError,
        id: &str,
    ) -> hyper::Response<Body> {
        use sinew_core::ports::StorageError;
        let code = match e {
            StorageError::Unavailable { .. } => Code::Unavailable,
            _ => Code::Internal,
        };
        let mut r = problem(code, "the reviews could not be read or written", id);
        r.extensions_mut().insert(super::Internal(e.to_string()));
        r
    }
}
