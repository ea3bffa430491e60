//! `redis.tls`: the PEM files read once at engine start into the redis crate's
//! [`TlsCertificates`], which every mode hands to its clients (single server, every
//! cluster node, Sentinels and their master).
//!
//! The files are checked here, not left to the crate: it would report an unreadable or
//! empty bundle without naming the file, or (a CA file with no certificate in it) accept
//! it and then trust nothing, so every connection would fail with a certificate error far
//! from its cause.

use crate::config::RedisTlsConfig;
use crate::engine::EngineError;
use redis::{ClientTlsConfig, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// The certificates `cfg` names, or None when it names none (system roots, no client
/// certificate). Errors name the key and the file.
pub(crate) fn certificates(cfg: &RedisTlsConfig) -> Result<Option<TlsCertificates>, EngineError> {
    if cfg.is_empty() {
        return Ok(None);
    }
    let root_cert = match &cfg.ca_file {
        Some(path) => Some(certs("redis.tls.caFile", path)?),
        None => None,
    };
    let client_tls = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: certs("redis.tls.certFile", cert)?,
            client_key: private_key("redis.tls.keyFile", key)?,
        }),
        (None, None) => None,
        // Config validation refuses one without the other; kept an error, never a panic.
        _ => {
            return Err(EngineError::Internal(
                "redis.tls.certFile and redis.tls.keyFile must be set together".into(),
            ))
        }
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|e| EngineError::Internal(format!("{key} {}: {e}", path.display())))
}

/// A file of one or more PEM certificates, as read (the crate parses it again).
fn certs(key: &str, path: &Path) -> Result<Vec<u8>, EngineError> {
    let pem = read(key, path)?;
    let bad = |m: String| EngineError::Internal(format!("{key} {}: {m}", path.display()));
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(pem)
}

/// A file holding a PEM private key, as read.
fn private_key(key: &str, path: &Path) -> Result<Vec<u8>, EngineError> {
    let pem = read(key, path)?;
    // The error says what is missing, never the file's content.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        EngineError::Internal(format!(
            "{key} {}: holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        ))
    })?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A temporary directory removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            let d = std::env::temp_dir().join(format!(
                "chatgw-tls-unit-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&d).expect("temp dir");
            Dir(d)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).expect("write");
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn err(cfg: &RedisTlsConfig) -> String {
        match certificates(cfg) {
            Ok(_) => panic!("accepted {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn nothing_set_means_no_certificates() {
        assert!(certificates(&RedisTlsConfig::default())
            .expect("empty")
            .is_none());
    }

    #[test]
    fn unreadable_and_empty_files_are_named() {
        let dir = Dir::new();
        let missing = dir.0.join("missing.crt");
        let e = err(&RedisTlsConfig {
            ca_file: Some(missing.clone()),
            ..Default::default()
        });
        assert!(
            e.contains("redis.tls.caFile") && e.contains(&missing.display().to_string()),
            "{e}"
        );
        let junk = dir.file("junk.crt", "not a certificate\n");
        let e = err(&RedisTlsConfig {
            ca_file: Some(junk.clone()),
            ..Default::default()
        });
        assert!(
            e.contains(&junk.display().to_string()) && e.contains("no PEM certificate"),
            "{e}"
        );
        // A certificate where the key should be: no private key in it.
        let cert_only = dir.file(
            "tls.crt",
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        );
        let e = err(&RedisTlsConfig {
            cert_file: Some(cert_only.clone()),
            key_file: Some(cert_only.clone()),
            ..Default::default()
        });
        assert!(
            e.contains("redis.tls.keyFile") && e.contains("no PEM private key"),
            "{e}"
        );
        let e = err(&RedisTlsConfig {
            cert_file: Some(cert_only),
            ..Default::default()
        });
        assert!(e.contains("set together"), "{e}");
    }
}
