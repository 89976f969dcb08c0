//! Outbound HTTPS: one client for external services and JWKS documents,
//! trusting the Mozilla roots (webpki-roots) plus, optionally, the
//! certificates of a PEM file (`SINEW_CA_FILE`: a private CA).

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// An HTTP/1 client for `http://` and `https://` URLs.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client, trusting the public roots and the certificates in `ca_file`.
pub fn client(ca_file: Option<&Path>) -> Result<HttpsClient> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read the CA file `{}`", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("`{}` is not a PEM certificate file", path.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        anyhow::ensure!(
            added > 0,
            "`{}` holds no usable certificate",
            path.display()
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// GETs a URL's body (at most 1 MiB, 10 s).
pub async fn get(client: &HttpsClient, url: &str) -> Result<Bytes> {
    use http_body_util::{BodyExt, Limited};
    let req = hyper::Request::get(url)
        .header("accept", "application/json")
        .body(Full::new(Bytes::new()))?;
    let fetch = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "`{url}` answered {status}");
        let body = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading `{url}`: {e}"))?;
        Ok(body.to_bytes())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("`{url}` did not answer within 10 s"))?
}
