//! Webhook signatures. A webhook authenticates by its signature alone:
//! the body signed with the secret in the environment variable its trigger
//! names, in the scheme it names (`hmac-sha256`, `stripe`, `github`). A
//! delivery whose signature holds runs as the caller `webhook:<tool>` with
//! the tool's `auth.roles`; anything else is 401 before the tool runs, and
//! the refusal never names a setting.

use sinew_core::contract::Auth;
use sinew_core::spec::{Spec, Trigger, WebhookScheme};
use std::collections::HashMap;

/// How one webhook tool's deliveries are verified.
#[derive(Clone)]
pub struct Webhook {
    tool: String,
    scheme: WebhookScheme,
    /// The secret; `None` when its variable is not set (`sinew serve` does
    /// not start then; were it to verify, every delivery would be refused).
    secret: Option<Vec<u8>>,
    /// The variable that should hold it, for the list of missing settings.
    pub variable: Option<String>,
    /// The header, lower case.
    header: String,
    tolerance_seconds: u64,
    roles: Vec<String>,
}

/// Why a delivery was refused (each is a 401; the words are the caller's).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The secret is not configured (`sinew serve` refuses to start
    /// without it: a guard, not an answer a caller gets).
    CannotVerify,
    /// No signature header, or one that is not in the scheme's form.
    Missing(String),
    /// The signature does not match the body.
    Mismatch(String),
    /// A `stripe` signature older (or further ahead) than the tolerance.
    Expired(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::CannotVerify => f.write_str("this webhook cannot verify signatures"),
            Refused::Missing(h) => write!(f, "the `{h}` signature is missing or malformed"),
            Refused::Mismatch(h) => write!(f, "the `{h}` signature does not match the body"),
            Refused::Expired(h) => write!(
                f,
                "the `{h}` signature's timestamp is outside the tolerance (a replayed or delayed delivery)"
            ),
        }
    }
}

impl Webhook {
    /// The webhook of a tool with a `webhook` trigger, its secret read from
    /// the environment.
    pub fn of(spec: &Spec, tool: &str, secrets: &crate::secrets::Secrets) -> Option<Webhook> {
        let t = spec.tools.get(tool)?;
        let Trigger::Webhook {
            secret,
            header,
            scheme,
            tolerance_seconds,
            ..
        } = &t.trigger
        else {
            return None;
        };
        Some(Webhook {
            tool: tool.to_owned(),
            scheme: *scheme,
            secret: secret
                .as_ref()
                .and_then(|v| secrets.get(v))
                .map(String::into_bytes),
            variable: secret.clone(),
            header: header.to_ascii_lowercase(),
            tolerance_seconds: *tolerance_seconds,
            roles: t.auth.roles.clone(),
        })
    }

    /// Whether the secret is configured.
    pub fn configured(&self) -> bool {
        self.secret.is_some()
    }

    /// Checks a delivery: `signature` is its header's value, `now_s` the
    /// clock in Unix seconds (for `stripe`'s tolerance).
    pub fn verify(&self, signature: Option<&str>, body: &[u8], now_s: i64) -> Result<(), Refused> {
        let Some(secret) = &self.secret else {
            return Err(Refused::CannotVerify);
        };
        let header = || self.header.clone();
        let signature = signature.map(str::trim).unwrap_or_default();
        match self.scheme {
            WebhookScheme::HmacSha256 | WebhookScheme::Github => {
                let hex = match self.scheme {
                    WebhookScheme::Github => signature.strip_prefix("sha256="),
                    _ => Some(signature.strip_prefix("sha256=").unwrap_or(signature)),
                };
                let given = hex
                    .and_then(from_hex)
                    .ok_or_else(|| Refused::Missing(header()))?;
                if !mac_matches(secret, &[body], &given) {
                    return Err(Refused::Mismatch(header()));
                }
            }
            WebhookScheme::Stripe => {
                // `t=1492774577,v1=5257…,v1=…,v0=…`: the timestamp, then
                // one or more signatures (several while a secret rolls).
                let mut t = None;
                let mut v1 = Vec::new();
                for part in signature.split(',') {
                    match part.trim().split_once('=') {
                        Some(("t", v)) => t = v.parse::<i64>().ok(),
                        Some(("v1", v)) => v1.extend(from_hex(v)),
                        _ => {}
                    }
                }
                let Some(t) = t.filter(|_| !v1.is_empty()) else {
                    return Err(Refused::Missing(header()));
                };
                let signed = format!("{t}.");
                if !v1
                    .iter()
                    .any(|g| mac_matches(secret, &[signed.as_bytes(), body], g))
                {
                    return Err(Refused::Mismatch(header()));
                }
                if now_s.abs_diff(t) > self.tolerance_seconds {
                    return Err(Refused::Expired(header()));
                }
            }
        }
        Ok(())
    }

    /// The header carrying the signature (lower case).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Who a verified delivery runs as: `webhook:<tool>`, with the tool's
    /// roles.
    pub fn caller(&self) -> Auth {
        let sub = format!("webhook:{}", self.tool);
        Auth {
            roles: self.roles.clone(),
            claims: serde_json::json!({ "sub": sub }),
            sub,
        }
    }
}

/// Each webhook tool's check (tools with spec errors are not served).
pub fn webhooks(spec: &Spec, secrets: &crate::secrets::Secrets) -> HashMap<String, Webhook> {
    spec.tools
        .keys()
        .filter(|name| !spec.broken_tools.contains(*name))
        .filter_map(|name| Some((name.clone(), Webhook::of(spec, name, secrets)?)))
        .collect()
}

/// Bytes from hex (`None` for anything else, or an empty string).
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Whether `given` is the HMAC-SHA256 of `parts` (concatenated) with
/// `secret`, compared in constant time.
fn mac_matches(secret: &[u8], parts: &[&[u8]], given: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(parts: &[&[u8]]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        for p in parts {
            mac.update(p);
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn hook(scheme: WebhookScheme, secret: Option<&[u8]>) -> Webhook {
        Webhook {
            tool: "paid".into(),
            scheme,
            secret: secret.map(<[u8]>::to_vec),
            variable: Some("SHOP_HOOK_SECRET".into()),
            header: scheme.default_header().to_ascii_lowercase(),
            tolerance_seconds: 300,
            roles: vec!["payments".into()],
        }
    }

    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;

    /// `hmac-sha256`: the hex HMAC of the body, optionally `sha256=`;
    /// without a secret nothing is taken, and the refusal does not name the
    /// setting.
    #[test]
    fn hmac_signatures() {
        let ok = hook(WebhookScheme::HmacSha256, Some(b"s3cret"));
        let good = sign(&[BODY]);
        assert_eq!(ok.verify(Some(&good), BODY, 0), Ok(()));
        assert_eq!(ok.verify(Some(&format!("sha256={good}")), BODY, 0), Ok(()));
        assert!(matches!(
            ok.verify(Some(&good), br#"{"id":"evt_2"}"#, 0),
            Err(Refused::Mismatch(_))
        ));
        assert!(matches!(
            ok.verify(Some("00"), BODY, 0),
            Err(Refused::Mismatch(_))
        ));
        assert!(matches!(
            ok.verify(Some("zz"), BODY, 0),
            Err(Refused::Missing(_))
        ));
        assert!(matches!(ok.verify(None, BODY, 0), Err(Refused::Missing(_))));
        let unset = hook(WebhookScheme::HmacSha256, None)
            .verify(Some(&good), BODY, 0)
            .unwrap_err();
        assert_eq!(unset, Refused::CannotVerify);
        assert!(!unset.to_string().contains("SHOP_HOOK_SECRET"));
        // Another secret's signature.
        let other = hook(WebhookScheme::HmacSha256, Some(b"other"));
        assert!(other.verify(Some(&good), BODY, 0).is_err());
    }

    /// `github`: `sha256=` is required.
    #[test]
    fn github_signatures() {
        let h = hook(WebhookScheme::Github, Some(b"s3cret"));
        let good = sign(&[BODY]);
        assert_eq!(h.verify(Some(&format!("sha256={good}")), BODY, 0), Ok(()));
        assert!(matches!(
            h.verify(Some(&good), BODY, 0),
            Err(Refused::Missing(_))
        ));
        assert!(matches!(
            h.verify(Some(&format!("sha256={good}")), b"{}", 0),
            Err(Refused::Mismatch(_))
        ));
    }

    /// `stripe`: `t=…,v1=…` over `t.body`, any of several `v1`, within the
    /// tolerance either way; an old signature is expired even when valid.
    #[test]
    fn stripe_signatures() {
        let h = hook(WebhookScheme::Stripe, Some(b"s3cret"));
        let t = 1_800_000_000i64;
        let v1 = sign(&[format!("{t}.").as_bytes(), BODY]);
        let header = format!("t={t},v1={v1},v0=6ffbb59b");
        assert_eq!(h.verify(Some(&header), BODY, t + 10), Ok(()));
        assert_eq!(h.verify(Some(&header), BODY, t - 10), Ok(()));
        let rolled = format!("t={t},v1={},v1={v1}", "ab".repeat(32));
        assert_eq!(h.verify(Some(&rolled), BODY, t), Ok(()));
        assert!(matches!(
            h.verify(Some(&header), BODY, t + 301),
            Err(Refused::Expired(_))
        ));
        // A timestamp changed to look fresh breaks the signature.
        let moved = format!("t={},v1={v1}", t + 400);
        assert!(matches!(
            h.verify(Some(&moved), BODY, t + 400),
            Err(Refused::Mismatch(_))
        ));
        assert!(matches!(
            h.verify(Some(&header), b"{\"id\":\"evt_9\"}", t),
            Err(Refused::Mismatch(_))
        ));
        for bad in ["", "v1=00", &format!("t={t}"), "t=x,v1=00"] {
            assert!(
                matches!(h.verify(Some(bad), BODY, t), Err(Refused::Missing(_))),
                "{bad}"
            );
        }
        // Runs as the webhook's caller, with the tool's roles.
        let who = h.caller();
        assert_eq!(
            (who.sub.as_str(), who.roles.as_slice()),
            ("webhook:paid", &["payments".to_string()][..])
        );
    }
}
