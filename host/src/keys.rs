//! API keys for machine callers: `sinew keys create` makes one (shown
//! once), the database keeps only its SHA-256 (`sinew_keys`), and
//! `sinew serve` takes `Authorization: Bearer sinew_…` as that key's
//! caller: subject `key:<id>`, the key's roles and claims. Revoked and
//! expired keys are refused (401); a server notices a revocation within
//! [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde_json::{Map, Value};
use sinew_core::contract::Auth;
use sinew_core::hash::sha256_hex;

/// What every key starts with (so a key is told from a JWT at a glance,
/// and secret scanners can find leaked ones).
pub const PREFIX: &str = "sinew_";

/// What the subject of a key's calls starts with (`key:<id>`): a JWT may
/// not name such a subject.
pub const SUBJECT_PREFIX: &str = "key:";

/// How long a server trusts what it read about a key: a revoked key stops
/// working on every instance within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Keys remembered per server at most (the cache is emptied when full).
const CACHE_MAX: usize = 10_000;

/// A new key: its id (public, in the audit log as `key:<id>`) and the key
/// itself (secret, shown once).
pub struct NewKey {
    /// 16 hex digits.
    pub id: String,
    /// `sinew_<id>_<secret>`.
    pub key: String,
}

/// Makes a key from 8 + 24 random bytes (192 bits of secret).
pub fn generate() -> Result<NewKey> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 24];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Ok(NewKey {
        key: format!("{PREFIX}{id}_{secret}"),
        id,
    })
}

/// Whether a bearer token is an API key (rather than a JWT).
pub fn is_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// A key's row, as a server reads it.
#[derive(Debug, Clone)]
struct Stored {
    id: String,
    roles: Vec<String>,
    claims: Map<String, Value>,
    expires_ms: Option<i64>,
    revoked: bool,
}

/// Why a key is refused (the message is the 401's detail: it never says
/// whether the key exists).
#[derive(Debug)]
pub enum Refused {
    /// Unknown, revoked or expired.
    Invalid(&'static str),
    /// The database could not be asked.
    Unavailable(String),
}

/// The keys a server has looked up lately, by the SHA-256 of the key.
#[derive(Default)]
pub struct Keys {
    cache: Mutex<HashMap<String, (Instant, Option<Stored>)>>,
}

impl Keys {
    /// The caller a key names, checked against `sinew_keys` (or what was
    /// read of it in the last [`CACHE_TTL`]) at `now_ms`.
    pub async fn caller(
        &self,
        db: &crate::pg::PgBackend,
        key: &str,
        now_ms: i64,
    ) -> Result<Auth, Refused> {
        let hash = sha256_hex(key.as_bytes());
        let cached = self.cache.lock().ok().and_then(|c| {
            c.get(&hash)
                .filter(|(at, _)| at.elapsed() < CACHE_TTL)
                .map(|(_, s)| s.clone())
        });
        let stored = match cached {
            Some(s) => s,
            None => {
                let s = db
                    .api_key(&hash)
                    .await
                    .map_err(|e| Refused::Unavailable(e.to_string()))?
                    .map(|row| parse_row(&row));
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() >= CACHE_MAX {
                        c.clear();
                    }
                    c.insert(hash, (Instant::now(), s.clone()));
                }
                s
            }
        };
        let Some(k) = stored else {
            return Err(Refused::Invalid("the API key is not valid"));
        };
        if k.revoked {
            return Err(Refused::Invalid("the API key was revoked"));
        }
        if k.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(Refused::Invalid("the API key has expired"));
        }
        let sub = format!("{SUBJECT_PREFIX}{}", k.id);
        let mut claims = k.claims;
        claims.insert("sub".into(), Value::from(sub.clone()));
        claims.insert("key".into(), Value::from(k.id));
        Ok(Auth {
            sub,
            roles: k.roles,
            claims: Value::Object(claims),
        })
    }
}

/// A row of [`crate::pg::PgBackend::api_key`]: id, roles, claims (JSON
/// text), expiry (ms since the epoch), revoked.
pub type Row = (String, Vec<String>, String, Option<i64>, bool);

fn parse_row((id, roles, claims, expires_ms, revoked): &Row) -> Stored {
    let claims = match serde_json::from_str(claims) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Stored {
        id: id.clone(),
        roles: roles.clone(),
        claims,
        expires_ms: *expires_ms,
        revoked: *revoked,
    }
}

/// One key of `sinew keys list`.
#[derive(Debug)]
pub struct Listed {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Its claims (a JSON object).
    pub claims: Value,
    /// When it was made, expires and was revoked (RFC 3339).
    pub created: String,
    /// See `created`.
    pub expires: Option<String>,
    /// See `created`.
    pub revoked: Option<String>,
}

/// Records a new key (the table is created if no migration has yet).
pub async fn create(
    client: &tokio_postgres::Client,
    name: &str,
    roles: &[String],
    claims: &Map<String, Value>,
    expires: Option<jiff::Timestamp>,
) -> Result<NewKey> {
    if roles.is_empty() {
        bail!("a key needs at least one role (--roles)");
    }
    check_roles(roles)?;
    check_claims(claims)?;
    client
        .batch_execute(sinew_core::migrate::KEYS_TABLE)
        .await
        .context("creating sinew_keys")?;
    let key = generate()?;
    let expires = expires.map(|t| t.to_string());
    client
        .execute(
            "INSERT INTO sinew_keys (id, hash, name, roles, claims, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz)",
            &[
                &key.id,
                &sha256_hex(key.key.as_bytes()),
                &name,
                &roles,
                &Value::Object(claims.clone()).to_string(),
                &expires,
            ],
        )
        .await
        .context("recording the key")?;
    Ok(key)
}

/// Whether `s` is a role name as a spec declares one
/// (`^[A-Za-z_][A-Za-z0-9_]{0,62}$`).
pub fn is_role_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

/// Refuses the claims sinew sets itself: `sub`, `key` and `roles`.
pub fn check_claims(claims: &Map<String, Value>) -> Result<()> {
    for reserved in ["sub", "key"] {
        if claims.contains_key(reserved) {
            bail!("the claim `{reserved}` is set by sinew (`key:<id>`, the key's id)");
        }
    }
    if claims.contains_key("roles") {
        bail!("the claim `roles` is set by sinew (the key's --roles): name the roles there");
    }
    Ok(())
}

/// Refuses a role name no spec can declare, and a role named twice.
pub fn check_roles(roles: &[String]) -> Result<()> {
    for (i, role) in roles.iter().enumerate() {
        if !is_role_name(role) {
            bail!(
                "--roles: `{role}` is not a role name (letters, digits and `_`, starting with \
                 a letter or `_`, at most 63 characters)"
            );
        }
        if roles[..i].contains(role) {
            bail!("--roles: `{role}` is named twice");
        }
    }
    Ok(())
}

/// Every key, newest first.
pub async fn list(client: &tokio_postgres::Client) -> Result<Vec<Listed>> {
    use crate::pg::rfc3339_sql;
    client
        .batch_execute(sinew_core::migrate::KEYS_TABLE)
        .await
        .context("creating sinew_keys")?;
    let rows = client
        .query(
            &format!(
                "SELECT id, name, roles, claims, {}, {}, {} FROM sinew_keys \
                 ORDER BY created_at DESC, id",
                rfc3339_sql("created_at", false),
                rfc3339_sql("expires_at", false),
                rfc3339_sql("revoked_at", false)
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Listed {
            id: r.get(0),
            name: r.get(1),
            roles: r.get(2),
            claims: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or(Value::Null),
            created: r.get(4),
            expires: r.get(5),
            revoked: r.get(6),
        })
        .collect())
}

/// Revokes key `id`: `Ok(false)` when there is none or it was revoked
/// already.
pub async fn revoke(client: &tokio_postgres::Client, id: &str) -> Result<bool> {
    let n = client
        .execute(
            "UPDATE sinew_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await
        .context("revoking the key")?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(is_key(&a.key));
        assert!(a.key.starts_with(&format!("sinew_{}_", a.id)));
        assert_eq!(a.id.len(), 16);
        assert_eq!(a.key.len(), "sinew_".len() + 16 + 1 + 32);
        assert_ne!(a.key, b.key);
        assert_ne!(a.id, b.id);
        assert!(!is_key("eyJhbGciOiJIUzI1NiJ9.e30.x"));
    }

    /// Roles are named as a spec names them, once each.
    #[test]
    fn roles_are_checked_as_a_spec_names_them() {
        let roles =
            |r: &[&str]| check_roles(&r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert!(roles(&["ops", "_x", "Staff_2"]).is_ok());
        for bad in ["no such role", "2x", "a-b", "é", &"r".repeat(64)] {
            let err = roles(&[bad]).unwrap_err().to_string();
            assert!(err.contains("is not a role name"), "{bad}: {err}");
        }
        let err = roles(&["ops", "ops"]).unwrap_err().to_string();
        assert!(err.contains("named twice"), "{err}");
    }
}
