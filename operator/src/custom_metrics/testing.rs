//! Certificates for tests: a CA, client certificates it signs, and the request-header
//! ConfigMap data an API server would publish for it.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use std::collections::BTreeMap;

/// A CA that can sign.
pub struct TestCa {
    /// Its certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A client certificate and its key.
pub struct TestCert {
    /// DER of the certificate.
    pub der: CertificateDer<'static>,
    /// PEM of the private key (PKCS#8).
    pub key_pem: String,
}

/// A fresh self-signed CA named `name`.
pub fn ca(name: &str) -> TestCa {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-signed");
    TestCa {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A client certificate with common name `cn`, signed by `ca`.
pub fn client_cert(ca: &TestCa, cn: &str) -> TestCert {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // Valid for a day, so a test can ask about a time after it expired.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(now + 86_400).expect("representable time");
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    TestCert {
        der: cert.der().clone(),
        key_pem: key.serialize_pem(),
    }
}

/// `extension-apiserver-authentication` data for a request-header CA and allowed names,
/// with the headers kube-apiserver uses.
pub fn front_proxy_data(ca_pem: &str, allowed: &[&str]) -> BTreeMap<String, String> {
    let json = |v: &[&str]| serde_json::to_string(v).expect("json");
    BTreeMap::from([
        ("requestheader-client-ca-file".into(), ca_pem.to_string()),
        ("requestheader-allowed-names".into(), json(allowed)),
        (
            "requestheader-username-headers".into(),
            json(&["X-Remote-User"]),
        ),
        (
            "requestheader-group-headers".into(),
            json(&["X-Remote-Group"]),
        ),
        (
            "requestheader-extra-headers-prefix".into(),
            json(&["X-Remote-Extra-"]),
        ),
    ])
}

/// A pod's `/metrics` on loopback: every request is answered 200 with `body`, then the
/// connection is closed.
pub async fn serve_metrics(body: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                // The reader may hang up once it has what it needs.
                if stream.write_all(head.as_bytes()).await.is_ok() {
                    let _ = stream.write_all(&body).await;
                }
            });
        }
    });
    addr
}

/// A pod on a lost node, as near as loopback gets: connections are accepted (by the
/// kernel and then the listener) and never answered; each is held until the reader gives
/// up and closes it.
pub async fn serve_nothing() -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}
