//! TLS for the custom metrics API: the serving certificate (swapped in place when the
//! Secret changes, so renewals need no restart) and a client-certificate request that
//! lets every client finish the handshake. Whether a client certificate proves anything
//! is decided per request by [`super::authn`]: a request without a valid front-proxy
//! certificate gets a 401 it can read, not a TLS alert.

use super::certs::{Material, TLS_CRT, TLS_KEY};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::Client;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The certificate being served; empty until the Secret has been read.
#[derive(Debug, Default)]
pub struct ServingCert {
    current: RwLock<Option<(Arc<CertifiedKey>, String)>>,
    loaded: AtomicBool,
}

impl ServingCert {
    /// Serves `cert_pem`/`key_pem` from the next handshake on. Unchanged material is a no-op.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<bool, String> {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|(_, pem)| pem == cert_pem) {
            return Ok(false);
        }
        *guard = Some((
            Arc::new(certified_key(cert_pem, key_pem)?),
            cert_pem.to_string(),
        ));
        self.loaded.store(true, Ordering::Release);
        Ok(true)
    }

    /// Whether a certificate is loaded (the operator's readiness waits for it).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|(key, _)| key.clone())
    }
}

/// A certificate chain and key from PEM.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in tls.crt".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("key: {e}"))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// Asks for a client certificate, requires none, and checks only that the client holds
/// the key of what it presents (the handshake signature). Chain and name are checked per
/// request against the request-header CA, which can change while connections stay open.
#[derive(Debug)]
struct RequestClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RequestClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Go clients (the aggregator) send their certificate regardless of hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's TLS configuration: HTTP/1.1 only (ALPN), certificates from `serving`.
pub fn server_config(serving: Arc<ServingCert>) -> Result<ServerConfig, rustls::Error> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RequestClientCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Keeps `serving` in step with the Secret every `every` (every replica does this; only
/// the leader writes the Secret). A missing or broken Secret keeps the last good pair.
pub async fn follow_secret(
    client: Client,
    namespace: String,
    name: String,
    serving: Arc<ServingCert>,
    every: Duration,
) {
    let api = Api::<Secret>::namespaced(client, &namespace);
    let mut last_problem = String::new();
    loop {
        let problem = match api.get_opt(&name).await {
            Ok(Some(secret)) => {
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                match Material::from_data(&data) {
                    Some(m) => match serving.set(&m.cert, &m.key) {
                        Ok(true) => {
                            tracing::info!(secret = %format!("{namespace}/{name}"), "serving the custom metrics certificate from the Secret");
                            String::new()
                        }
                        Ok(false) => String::new(),
                        Err(e) => format!("unusable {TLS_CRT}/{TLS_KEY}: {e}"),
                    },
                    None => "the Secret lacks a certificate key".into(),
                }
            }
            Ok(None) => "the Secret does not exist yet (the leader creates it)".into(),
            Err(e) => format!("reading the Secret: {e}"),
        };
        if !problem.is_empty() && problem != last_problem {
            tracing::warn!(secret = %format!("{namespace}/{name}"), %problem, "custom metrics certificate");
        }
        last_problem = problem;
        tokio::time::sleep(every).await;
    }
}
