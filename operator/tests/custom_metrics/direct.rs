//! Requests straight to the operator's custom metrics server (not through the aggregator),
//! over TLS, as the aggregator's front proxy or as anyone else.

use super::{OPS, PODS_V1B1, SERVICE};
use std::net::SocketAddr;
use std::sync::Arc;

/// A TLS connection straight to the operator (not through the aggregator), trusting only
/// `roots` (PEM) for the serving certificate, presenting `cert` (certificate and key PEM).
pub async fn connect(
    addr: SocketAddr,
    roots: &str,
    cert: Option<(&str, &str)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut store = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(roots.as_bytes()) {
        store.add(der.expect("CA")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store);
    let config = match cert {
        Some((crt, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(crt.as_bytes())
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    // The serving certificate names the Service the way the aggregator addresses it.
    let name = ServerName::try_from(format!("{SERVICE}.{OPS}.svc")).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The status of a GET straight to the operator, as the front proxy speaking for `user`
/// in `group` (when `cert` is the proxy's certificate).
pub async fn direct(
    addr: SocketAddr,
    roots: &str,
    cert: Option<(&str, &str)>,
    user: &str,
    group: &str,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = connect(addr, roots, cert)
        .await
        .expect("TLS handshake verifying the serving certificate against the caBundle");
    let request = format!(
        "GET {PODS_V1B1} HTTP/1.1\r\nHost: x\r\nX-Remote-User: {user}\r\n\
         X-Remote-Group: {group}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The first certificate of a PEM bundle.
pub fn first_pem(bundle: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}
