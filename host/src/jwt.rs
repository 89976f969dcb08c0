//! Verifying bearer tokens. The algorithm comes from the configuration
//! (HS256 with a shared secret; RS256/ES256 for keys of a JWKS, per key),
//! never from the token. `exp` is required, `nbf` checked, leeway at most
//! 30 s; `iss` and `aud` are required when configured — a token *without*
//! `aud` is refused when an audience is set.

use anyhow::{Context, Result, bail};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;
use sinew_core::contract::Auth;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// How tokens are verified.
#[derive(Clone)]
pub struct JwtConfig {
    /// The HS256 secret.
    pub secret: Option<String>,
    /// Keys by `kid`, each with its pinned algorithm.
    pub keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// The claim holding the roles (default `roles`).
    pub roles_claim: String,
}

impl Default for JwtConfig {
    /// Accepts no token; roles in the `roles` claim.
    fn default() -> Self {
        JwtConfig {
            secret: None,
            keys: Vec::new(),
            issuer: None,
            audience: None,
            roles_claim: "roles".into(),
        }
    }
}

impl JwtConfig {
    /// HS256 with `secret`, nothing else required.
    pub fn hs256(secret: &str) -> JwtConfig {
        JwtConfig {
            secret: Some(secret.to_owned()),
            ..JwtConfig::default()
        }
    }
}

/// Why a token was refused (the 401's detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl JwtConfig {
    /// Reads a JWKS document (a file's text).
    pub fn add_jwks(&mut self, text: &str) -> Result<()> {
        let set: JwkSet = serde_json::from_str(text).context("the JWKS is not a JWK set")?;
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).context("a key of the JWKS is malformed")?;
            self.keys.push((jwk.common.key_id.clone(), alg, key));
        }
        if self.keys.is_empty() {
            bail!("the JWKS has no RSA or P-256 key");
        }
        Ok(())
    }

    /// Whether any way of verifying tokens is configured.
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || !self.keys.is_empty()
    }

    /// The claims a token must carry, in the order a missing one is
    /// named: `exp`, `sub`, then `iss` and `aud` when configured.
    fn required(&self) -> Vec<&'static str> {
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        required
    }

    fn validation(&self, alg: Algorithm, required: &[&str]) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(required);
        v
    }

    /// Decodes and validates a token. The library checks the required
    /// claims in the order of a hash set: when one is missing, the first
    /// missing in [`JwtConfig::required`]'s order is named, so the same
    /// token is always refused with the same words.
    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> jsonwebtoken::errors::Result<jsonwebtoken::TokenData<Value>> {
        use jsonwebtoken::errors::ErrorKind as K;
        let required = self.required();
        let result = jsonwebtoken::decode::<Value>(token, key, &self.validation(alg, &required));
        match result {
            Err(e) if matches!(e.kind(), K::MissingRequiredClaim(_)) => {
                for claim in required {
                    let one = self.validation(alg, &[claim]);
                    if let Err(first) = jsonwebtoken::decode::<Value>(token, key, &one)
                        && matches!(first.kind(), K::MissingRequiredClaim(_))
                    {
                        return Err(first);
                    }
                }
                Err(e)
            }
            other => other,
        }
    }

    /// Verifies a bearer token and returns the caller.
    pub fn verify(&self, token: &str) -> Result<Auth, Refused> {
        if !self.enabled() {
            return Err(Refused(
                "this server accepts no tokens (no SINEW_JWT_SECRET or SINEW_JWT_JWKS)".into(),
            ));
        }
        // (The library's own words name its parser and every algorithm it
        // knows: none of that goes to a caller.)
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            Refused("the token is malformed: not three base64url parts with a JWT header this server reads".into())
        })?;
        let (alg, key) = match (&header.kid, header.alg) {
            (Some(kid), _) if self.keys.iter().any(|(k, ..)| k.as_deref() == Some(kid)) => {
                let Some((_, alg, key)) =
                    self.keys.iter().find(|(k, ..)| k.as_deref() == Some(kid))
                else {
                    return Err(Refused("unknown key".into()));
                };
                (*alg, key.clone())
            }
            (_, Algorithm::HS256) if self.secret.is_some() => (
                Algorithm::HS256,
                DecodingKey::from_secret(self.secret.as_deref().unwrap_or("").as_bytes()),
            ),
            (None, _) if self.keys.len() == 1 && self.secret.is_none() => {
                let Some((_, alg, key)) = self.keys.first() else {
                    return Err(Refused("unknown key".into()));
                };
                (*alg, key.clone())
            }
            _ => {
                return Err(Refused(format!(
                    "tokens signed with {:?}{} are not accepted here",
                    header.alg,
                    header
                        .kid
                        .as_ref()
                        .map(|k| format!(" (key `{k}`)"))
                        .unwrap_or_default()
                )));
            }
        };
        let data = self
            .decode(token, &key, alg)
            .map_err(|e| Refused(describe(&e)))?;
        let claims = data.claims;
        // No engine stores a NUL character (Postgres cannot): a token
        // holding one names no caller.
        if sinew_core::input::has_nul(&claims) {
            return Err(Refused("the token's claims hold a NUL character".into()));
        }
        let sub = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(Refused(
                    "the token's `sub` must be a non-empty string".into(),
                ));
            }
        };
        // `key:<id>` is the subject of an API key's calls: a token may not
        // act as one (its idempotency scope, the rows it owns).
        if sub.starts_with(crate::keys::SUBJECT_PREFIX) {
            return Err(Refused(format!(
                "the token's `sub` may not start with `{}` (the subjects of API keys)",
                crate::keys::SUBJECT_PREFIX
            )));
        }
        let roles = match claims.get(&self.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => {
                let mut roles = Vec::with_capacity(list.len());
                for r in list {
                    match r {
                        Value::String(s) => roles.push(s.clone()),
                        _ => {
                            return Err(Refused(format!(
                                "the `{}` claim must be an array of strings",
                                self.roles_claim
                            )));
                        }
                    }
                }
                roles
            }
            Some(_) => {
                return Err(Refused(format!(
                    "the `{}` claim must be an array of strings",
                    self.roles_claim
                )));
            }
        };
        Ok(Auth { sub, roles, claims })
    }

    /// Mints an HS256 token (for trying things locally).
    pub fn mint(
        &self,
        sub: &str,
        roles: &[String],
        ttl_secs: u64,
        now_secs: u64,
    ) -> Result<String> {
        self.mint_with(sub, roles, &serde_json::Map::new(), ttl_secs, now_secs)
    }

    /// Mints an HS256 token with extra claims.
    pub fn mint_with(
        &self,
        sub: &str,
        roles: &[String],
        extra: &serde_json::Map<String, Value>,
        ttl_secs: u64,
        now_secs: u64,
    ) -> Result<String> {
        let Some(secret) = &self.secret else {
            bail!("set SINEW_JWT_SECRET (or --secret) to mint a token");
        };
        if sub.starts_with(crate::keys::SUBJECT_PREFIX) {
            bail!(
                "a token's subject may not start with `{}` (the subjects of API keys)",
                crate::keys::SUBJECT_PREFIX
            );
        }
        let mut claims = extra.clone();
        claims.insert("sub".into(), Value::from(sub));
        claims.insert(self.roles_claim.clone(), Value::from(roles.to_vec()));
        claims.insert("iat".into(), Value::from(now_secs));
        claims.insert("exp".into(), Value::from(now_secs + ttl_secs));
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), Value::from(iss.clone()));
        }
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), Value::from(aud.clone()));
        }
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Value::Object(claims),
            &EncodingKey::from_secret(secret.as_bytes()),
        )?)
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (`nbf`)".into(),
        K::InvalidSignature => "the token's signature is invalid".into(),
        K::InvalidIssuer => "the token's issuer (`iss`) is not accepted".into(),
        K::InvalidAudience => "the token's audience (`aud`) is not accepted".into(),
        // (A claim of the wrong type reads as missing: `"sub": 5`.)
        K::MissingRequiredClaim(c) if c == "sub" => {
            "the token's `sub` must be a non-empty string".into()
        }
        K::MissingRequiredClaim(c) => format!("the token has no `{c}` claim, or not of its type"),
        K::InvalidAlgorithm => "the token's algorithm is not accepted".into(),
        K::Json(_) | K::Utf8(_) | K::Base64(_) => {
            "the token is malformed: its claims are not a JSON object of the usual types".into()
        }
        _ => "the token is invalid".into(),
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sub` that is not a string is named as such, not as missing.
    #[test]
    fn a_sub_of_another_type_is_named() {
        let config = JwtConfig::hs256("s3cret");
        let now = now_secs();
        let token = |sub: Value| {
            let claims = serde_json::json!({"sub": sub, "exp": now + 60});
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        for sub in [Value::from(5), Value::from(""), Value::Null] {
            let Err(Refused(why)) = config.verify(&token(sub.clone())) else {
                panic!("{sub} was accepted");
            };
            assert_eq!(why, "the token's `sub` must be a non-empty string", "{sub}");
        }
        assert_eq!(
            config.verify(&token(Value::from("ann"))).unwrap().sub,
            "ann"
        );
    }

    fn signed(claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    }

    /// A token missing several required claims is always refused naming
    /// the same one (`iss` before `aud`): the library's order varied.
    #[test]
    fn the_missing_claim_named_is_always_the_same() {
        let config = JwtConfig {
            issuer: Some("X".into()),
            audience: Some("Y".into()),
            ..JwtConfig::hs256("s3cret")
        };
        let now = now_secs();
        let both = signed(&serde_json::json!({"sub": "ann", "exp": now + 60}));
        for _ in 0..50 {
            // (A new validation each time: a new hash set, a new order.)
            let Err(Refused(why)) = config.verify(&both) else {
                panic!("accepted");
            };
            assert_eq!(why, "the token has no `iss` claim, or not of its type");
        }
        let none = signed(&serde_json::json!({"roles": []}));
        for _ in 0..50 {
            let Err(Refused(why)) = config.verify(&none) else {
                panic!("accepted");
            };
            assert_eq!(why, "the token has no `exp` claim, or not of its type");
        }
        let aud = signed(&serde_json::json!({"sub": "ann", "exp": now + 60, "iss": "X"}));
        let Err(Refused(why)) = config.verify(&aud) else {
            panic!("accepted");
        };
        assert_eq!(why, "the token has no `aud` claim, or not of its type");
    }

    /// `key:…` subjects are API keys': a token naming one is refused.
    #[test]
    fn a_token_may_not_take_an_api_key_subject() {
        let config = JwtConfig::hs256("s3cret");
        let now = now_secs();
        let token = signed(&serde_json::json!({"sub": "key:3f9a0c1d2e4b5a69", "exp": now + 60}));
        let Err(Refused(why)) = config.verify(&token) else {
            panic!("accepted");
        };
        assert!(why.contains("may not start with `key:`"), "{why}");
        let token = signed(&serde_json::json!({"sub": "keyholder", "exp": now + 60}));
        assert_eq!(config.verify(&token).unwrap().sub, "keyholder");
    }
}
