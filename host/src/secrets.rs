//! Where the secrets a spec names come from: the environment variable of
//! that name, else a file of that name in the secrets directory
//! (`--secrets-dir`: Cloud Run and Kubernetes mount secrets as files; a
//! trailing newline is not part of the secret). A secret is never logged,
//! audited, or told to a caller.

use std::path::PathBuf;

/// The secrets' sources.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// A directory of files named after the variables, if any.
    pub dir: Option<PathBuf>,
}

impl Secrets {
    /// The value of secret `name`, if it is set and not empty.
    pub fn get(&self, name: &str) -> Option<String> {
        if let Ok(v) = std::env::var(name)
            && !v.is_empty()
        {
            return Some(v);
        }
        // Only a variable's name can be a file's: no path can be read.
        let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let dir = self.dir.as_ref().filter(|_| plain)?;
        let text = std::fs::read_to_string(dir.join(name)).ok()?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        (!text.is_empty()).then(|| text.to_owned())
    }
}

/// The names of every secret `spec` needs: its externals' auth secrets
/// and its webhooks' signing secrets, sorted, each once.
pub fn names(spec: &sinew_core::spec::Spec) -> Vec<String> {
    let mut out: Vec<String> = spec
        .externals
        .values()
        .filter_map(|x| x.auth.as_ref().map(|a| a.secret().to_owned()))
        .chain(spec.tools.values().filter_map(|t| match &t.trigger {
            sinew_core::spec::Trigger::Webhook { secret, .. } => secret.clone(),
            _ => None,
        }))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_named_after_the_variables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("SINEW_UNIT_FILE_SECRET"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("SINEW_UNIT_EMPTY"), "\n").unwrap();
        let s = Secrets {
            dir: Some(dir.path().to_path_buf()),
        };
        assert_eq!(s.get("SINEW_UNIT_FILE_SECRET").as_deref(), Some("s3cret"));
        assert_eq!(s.get("SINEW_UNIT_EMPTY"), None);
        assert_eq!(s.get("SINEW_UNIT_NOWHERE"), None);
        assert_eq!(s.get("../SINEW_UNIT_FILE_SECRET"), None);
        assert_eq!(Secrets::default().get("SINEW_UNIT_FILE_SECRET"), None);
        // The environment wins (PATH is always set).
        assert_eq!(s.get("PATH"), std::env::var("PATH").ok());
    }
}
