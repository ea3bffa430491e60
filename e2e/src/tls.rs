//! Certificates for TLS tests, made with rcgen in a temporary directory (removed on
//! drop): a CA, a certificate for 127.0.0.1 that Redis serves (and, in a cluster, shows
//! its peers as a client), and a client certificate for mutual TLS.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// A CA and the certificates it signed, as PEM files in a directory of their own.
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// A fresh CA named `name`, a server certificate for 127.0.0.1 and `localhost`, and a
    /// client certificate, written under the system's temporary directory.
    pub fn generate(name: &str) -> TlsFiles {
        let dir = std::env::temp_dir().join(format!(
            "chatgw-tls-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("tls dir");
        let files = TlsFiles { dir };
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("self-signed ca");
        files.write("ca.crt", &ca_cert.pem());
        let issuer = Issuer::new(ca, ca_key);

        // Both purposes: a cluster node (--tls-cluster) and a replica (--tls-replication)
        // present the server certificate as a client to the node they connect to.
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).expect("names");
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        server
            .distinguished_name
            .push(DnType::CommonName, "redis 127.0.0.1");
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");
        files.write("server.crt", &server_cert.pem());
        files.write("server.key", &server_key.serialize_pem());

        let mut client = CertificateParams::default();
        client
            .distinguished_name
            .push(DnType::CommonName, "chat gateway");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = client.signed_by(&client_key, &issuer).expect("client cert");
        files.write("tls.crt", &client_cert.pem());
        files.write("tls.key", &client_key.serialize_pem());
        files
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.dir.join(name), pem).expect("write a pem file");
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (`redis.tls.caFile`, the server's `--tls-ca-cert-file`).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The server's certificate (for 127.0.0.1 and localhost).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// The server certificate's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The client certificate (`redis.tls.certFile`).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    /// The client certificate's private key (`redis.tls.keyFile`).
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// `redis.tls` trusting this CA, with the client certificate when `mutual`.
    pub fn config(&self, mutual: bool) -> chat_gateway::config::RedisTlsConfig {
        chat_gateway::config::RedisTlsConfig {
            ca_file: Some(self.ca()),
            cert_file: mutual.then(|| self.client_cert()),
            key_file: mutual.then(|| self.client_key()),
        }
    }

    /// The redis crate's certificates for the test's own clients (CA and client
    /// certificate: enough for a server that requires mutual TLS).
    pub fn redis_certificates(&self) -> redis::TlsCertificates {
        let read = |p: PathBuf| std::fs::read(&p).expect("read a pem file");
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(self.client_cert()),
                client_key: read(self.client_key()),
            }),
            root_cert: Some(read(self.ca())),
        }
    }

    /// `redis-server` arguments serving TLS only, on `port`, with these files; client
    /// certificates required when `mutual`, not asked for otherwise.
    pub fn server_args(&self, port: u16, mutual: bool) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(self.server_cert()),
            "--tls-key-file".into(),
            path(self.server_key()),
            "--tls-ca-cert-file".into(),
            path(self.ca()),
            "--tls-auth-clients".into(),
            if mutual { "yes" } else { "no" }.into(),
        ]
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
