//! Google Cloud Pub/Sub push deliveries to `queue` tools, at
//! `POST /queues/{name}`.
//!
//! A push is authenticated by the OIDC token Pub/Sub sends (verified
//! against a JWKS, Google's by default: issuer, audience, and the service
//! account's `email` when one is configured) and runs as the caller
//! `queue:<name>` with the tool's roles. The envelope's `message.data`
//! (base64 of a JSON document) is the input; `message.messageId` is the
//! idempotency key, so a redelivered message is answered from its first
//! run. The answer tells Pub/Sub what to do: 2xx acknowledges (the tool
//! succeeded, or the message can never succeed: a bad envelope or input, a
//! refusal, a rule it breaks; it is audited either way), anything else has
//! Pub/Sub deliver it again (the push's token was refused, or the failure
//! may pass: a conflict, a rate limit, a service or the database down).

use crate::jwt::JwtConfig;
use base64::Engine as _;
use serde_json::Value;

/// Google's signing keys for the tokens of Pub/Sub pushes.
pub const GOOGLE_JWKS: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// The issuer of those tokens.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// How pushes are authenticated.
pub struct PushAuth {
    /// Issuer, audience and keys.
    pub jwt: JwtConfig,
    /// The service account the token must name (`email`), if set.
    pub service_account: Option<String>,
}

impl PushAuth {
    /// Checks the push's `Authorization: Bearer <OIDC token>`; the words of
    /// a refusal are the pusher's.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Value, String> {
        let token = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or("a push needs Pub/Sub's OIDC token (`Authorization: Bearer …`)")?;
        let auth = self.jwt.verify(token).map_err(|e| e.0)?;
        if let Some(account) = &self.service_account {
            let email = auth.claims.get("email").and_then(Value::as_str);
            let verified = auth.claims.get("email_verified") != Some(&Value::Bool(false));
            if email != Some(account.as_str()) || !verified {
                return Err("the push's token is not the configured service account's".into());
            }
        }
        Ok(auth.claims)
    }
}

/// A push's message: its id and the decoded input.
#[derive(Debug, PartialEq)]
pub struct Pushed {
    /// `message.messageId`.
    pub message_id: String,
    /// `message.data`, base64-decoded and read as JSON (`{}` without data).
    pub input: Value,
}

/// Reads Pub/Sub's push envelope: `{"message": {"data", "messageId",
/// "attributes", "publishTime"}, "subscription"}` (the snake-case
/// `message_id` is accepted too).
pub fn envelope(body: &[u8]) -> Result<Pushed, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the push is not a JSON envelope: {e}"))?;
    let message = v
        .get("message")
        .filter(|m| m.is_object())
        .ok_or("the push envelope has no `message` object")?;
    let message_id = ["messageId", "message_id"]
        .iter()
        .find_map(|k| message.get(*k).and_then(Value::as_str))
        .filter(|id| !id.is_empty())
        .ok_or("the push's message has no `messageId`")?
        .to_owned();
    let input = match message.get("data") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::String(data)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| "the message's `data` is not base64".to_string())?;
            if bytes.is_empty() {
                Value::Object(Default::default())
            } else {
                // A key twice is refused, as in an HTTP body: which one
                // the publisher, or another subscriber, read is not known.
                sinew_core::spec::source::strict_from_slice(&bytes)
                    .map_err(|e| format!("the message's `data` is not JSON: {e}"))?
            }
        }
        Some(_) => return Err("the message's `data` must be a base64 string".into()),
    };
    Ok(Pushed { message_id, input })
}

/// Whether an answer (status and problem code) acknowledges the message:
/// success, or a failure that delivering it again cannot mend.
pub fn acknowledges(status: u16, code: Option<&str>) -> bool {
    match status {
        200..=299 => true,
        // The push's token: fix the configuration, the message waits.
        401 | 408 | 429 => false,
        409 => !matches!(code, Some("conflict" | "idempotency_in_flight")),
        400..=499 => true,
        // A refusal by a service is an answer; other failures may pass.
        _ => code == Some("external_declined"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelopes_are_read_as_pubsub_sends_them() {
        let data = base64::engine::general_purpose::STANDARD.encode(br#"{"order": "o1"}"#);
        let push = json!({"message": {"data": data, "messageId": "136969346945",
                          "attributes": {"k": "v"}, "publishTime": "2026-12-05T10:00:00Z"},
                          "subscription": "projects/p/subscriptions/s"});
        assert_eq!(
            envelope(push.to_string().as_bytes()),
            Ok(Pushed {
                message_id: "136969346945".into(),
                input: json!({"order": "o1"})
            })
        );
        let bare = json!({"message": {"message_id": "7"}});
        assert_eq!(
            envelope(bare.to_string().as_bytes()).unwrap().input,
            json!({})
        );
        for (bad, says) in [
            (json!({"msg": {}}), "no `message`"),
            (json!({"message": {"data": "e30="}}), "no `messageId`"),
            (
                json!({"message": {"messageId": "1", "data": "%%%"}}),
                "not base64",
            ),
            (
                json!({"message": {"messageId": "1", "data": "bm90IGpzb24="}}),
                "not JSON",
            ),
            (
                json!({"message": {"messageId": "1", "data": base64::engine::general_purpose::STANDARD
                    .encode(br#"{"amount": 1, "amount": 2}"#)}}),
                "duplicate key `amount`",
            ),
        ] {
            let e = envelope(bad.to_string().as_bytes()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(envelope(b"nope").is_err());
    }

    #[test]
    fn what_is_acknowledged() {
        for (status, code) in [
            (200, None),
            (201, None),
            (400, Some("invalid_input")),
            (403, Some("forbidden")),
            (404, Some("not_found")),
            (409, Some("transition_not_allowed")),
            (422, Some("invariant_violated")),
            (502, Some("external_declined")),
        ] {
            assert!(acknowledges(status, code), "{status} {code:?}");
        }
        for (status, code) in [
            (401, Some("unauthenticated")),
            (409, Some("conflict")),
            (409, Some("idempotency_in_flight")),
            (429, Some("rate_limited")),
            (500, Some("internal")),
            (502, Some("external_failed")),
            (503, Some("unavailable")),
            (504, Some("deadline_exceeded")),
        ] {
            assert!(!acknowledges(status, code), "{status} {code:?}");
        }
    }
}
