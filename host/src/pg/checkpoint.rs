//! Signed checkpoints of the audit chain: the head (`seq`, `hash`) at a
//! time, signed with Ed25519, written to `sinew_audit_checkpoint` and to the
//! log, so that an operator can keep them away from the database. A chain
//! cut short, or rewritten and hashed again, no longer holds the entry a
//! checkpoint names: `sinew audit verify --checkpoint FILE` says so.
//!
//! A checkpoint is a JSON object: `{"checkpoint": "sinew-audit/1", "seq",
//! "hash", "time", "key", "signature"}`; `key` is the public key (hex),
//! `signature` the Ed25519 signature (base64) of the canonical JSON of the
//! object without `signature`.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde_json::{Value, json};
use tokio_postgres::Client;

/// The secret holding the signing key: 32 bytes, hex (64 digits) or
/// base64 (`openssl rand -hex 32` makes one).
pub const KEY_VAR: &str = "SINEW_AUDIT_SIGNING_KEY";

/// What a checkpoint's `checkpoint` field says.
pub const FORMAT: &str = "sinew-audit/1";

/// How often a server's sequencer signs the head, when it moved.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// An Ed25519 signing key.
#[derive(Clone)]
pub struct Signer(SigningKey);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_hex())
    }
}

impl Signer {
    /// The key from its secret text: 32 bytes in hex or base64.
    pub fn from_secret(text: &str) -> Result<Signer> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| anyhow!("not hex"))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| anyhow!("{KEY_VAR} is neither 64 hex digits nor base64"))?
        };
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow!("{KEY_VAR} must be 32 bytes (64 hex digits)"))?;
        Ok(Signer(SigningKey::from_bytes(&seed)))
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }

    /// A signed checkpoint of the head `seq`, `hash` at `time`.
    pub fn sign(&self, seq: u64, hash: &str, time: &str) -> Value {
        let mut v = json!({
            "checkpoint": FORMAT,
            "seq": seq,
            "hash": hash,
            "time": time,
            "key": self.public_hex(),
        });
        let signature = self.0.sign(sinew_core::hash::canonical(&v).as_bytes());
        v["signature"] =
            Value::from(base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()));
        v
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// A checkpoint's head, once its signature holds: by `trusted` (a public
/// key, hex) when given, else by the key it names.
pub fn check(v: &Value, trusted: Option<&str>) -> Result<(u64, String), String> {
    let Value::Object(m) = v else {
        return Err("a checkpoint is a JSON object".into());
    };
    if m.get("checkpoint").and_then(Value::as_str) != Some(FORMAT) {
        return Err(format!(
            "not a checkpoint (`checkpoint` is not \"{FORMAT}\")"
        ));
    }
    let field = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the checkpoint has no `{k}`"))
    };
    let seq = m
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or("the checkpoint has no `seq`")?;
    let (hash, key, signature) = (field("hash")?, field("key")?, field("signature")?);
    if let Some(t) = trusted
        && !t.eq_ignore_ascii_case(key)
    {
        return Err(format!(
            "the checkpoint is signed with key {key}, not the trusted {t}"
        ));
    }
    let key = unhex(key)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or("the checkpoint's `key` is not an Ed25519 public key")?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or("the checkpoint's `signature` is not an Ed25519 signature")?;
    let mut unsigned = m.clone();
    unsigned.shift_remove("signature");
    let text = sinew_core::hash::canonical(&Value::Object(unsigned));
    key.verify(text.as_bytes(), &signature)
        .map_err(|_| "the checkpoint's signature does not hold (it was altered)".to_owned())?;
    Ok((seq, hash.to_owned()))
}

/// Signs the chain's head now and records it in `sinew_audit_checkpoint`;
/// `None` when the chain is empty or this key signed that head already.
pub async fn write(client: &Client, signer: &Signer) -> Result<Option<Value>> {
    let Some((seq, hash)) = super::sequencer::head(client).await? else {
        return Ok(None);
    };
    let time = sinew_core::expr::value::format_timestamp(crate::serve::system_now_ms() * 1000);
    let v = signer.sign(u64::try_from(seq)?, &hash, &time);
    let n = client
        .execute(
            "INSERT INTO sinew_audit_checkpoint (seq, hash, key, signed_at, checkpoint) \
             VALUES ($1, $2, $3, $4::text::timestamptz, $5) ON CONFLICT DO NOTHING",
            &[&seq, &hash, &signer.public_hex(), &time, &v.to_string()],
        )
        .await
        .context("recording the checkpoint")?;
    Ok((n == 1).then_some(v))
}

/// Whether the chain still holds the head `checkpoint` names (its
/// signature checked first, see [`check`]): `Err` says what does not hold.
pub async fn holds(
    client: &Client,
    checkpoint: &Value,
    trusted: Option<&str>,
) -> Result<Result<u64, String>> {
    let (seq, hash) = match check(checkpoint, trusted) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let Ok(at) = i64::try_from(seq) else {
        bail!("`seq` out of range");
    };
    let found = client
        .query_opt("SELECT hash FROM sinew_audit WHERE seq = $1", &[&at])
        .await?;
    Ok(match found {
        None => Err(format!(
            "the chain was cut short: the checkpoint names entry {seq}, the chain ends at {}",
            super::sequencer::head(client).await?.map_or(0, |h| h.0)
        )),
        Some(r) if r.get::<_, String>(0) != hash => Err(format!(
            "entry {seq} is not the one the checkpoint signed: the history up to it was rewritten"
        )),
        Some(_) => Ok(seq),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_holds_only_as_signed() {
        let signer = Signer::from_secret(&"11".repeat(32)).unwrap();
        let same =
            Signer::from_secret(&base64::engine::general_purpose::STANDARD.encode([0x11u8; 32]))
                .unwrap();
        assert_eq!(signer.public_hex(), same.public_hex());
        let v = signer.sign(7, "abc", "2026-12-05T00:00:00Z");
        assert_eq!(check(&v, None), Ok((7, "abc".to_owned())));
        assert_eq!(
            check(&v, Some(&signer.public_hex())),
            Ok((7, "abc".to_owned()))
        );
        let other = Signer::from_secret(&"22".repeat(32)).unwrap();
        assert!(check(&v, Some(&other.public_hex())).is_err());
        for (k, x) in [
            ("seq", json!(8)),
            ("hash", json!("abd")),
            ("time", json!("x")),
        ] {
            let mut w = v.clone();
            w[k] = x;
            assert!(check(&w, None).unwrap_err().contains("altered"), "{k}");
        }
        // Re-signed with another key: the trusted key catches it.
        let forged = other.sign(7, "zzz", "2026-12-05T00:00:00Z");
        assert!(check(&forged, None).is_ok());
        assert!(check(&forged, Some(&signer.public_hex())).is_err());
        assert!(Signer::from_secret("short").is_err());
        assert!(Signer::from_secret(&"1".repeat(64)).is_ok());
    }
}
