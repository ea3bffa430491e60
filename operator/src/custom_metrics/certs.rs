//! The serving certificate of the custom metrics API and the CA the API server trusts it
//! by (the APIService's `caBundle`): issued, renewed and rotated before expiry.
//!
//! Material lives in one Secret so that every operator replica serves the same
//! certificate: `tls.crt`/`tls.key` (the serving pair), `ca.key` (the current CA's key)
//! and `ca.crt`, the trust bundle: the current CA first, then older CAs until they
//! expire. Rotation never leaves the API server without trust in what is served:
//! - the serving certificate is renewed from the current CA when a third of its life is
//!   left, or when the Service names it must carry change;
//! - a CA with a third of its life left is replaced by a new one that is *added* to the
//!   bundle; the serving certificate moves to the new CA only once the APIServices'
//!   `caBundle` carries it (`ca_published`), and the old CA leaves the bundle when it
//!   expires.
//!
//! Everything here is pure (time comes in as an argument) and unit-tested.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Secret keys.
pub const TLS_CRT: &str = "tls.crt";
/// Serving key.
pub const TLS_KEY: &str = "tls.key";
/// Trust bundle (current CA first).
pub const CA_CRT: &str = "ca.crt";
/// Current CA's key.
pub const CA_KEY: &str = "ca.key";

/// Certificates start this long before they are made, for clocks that lag a little.
const BACKDATE: Duration = Duration::from_secs(300);

/// Lifetimes and names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of a CA.
    pub ca_validity: Duration,
    /// Lifetime of a serving certificate.
    pub cert_validity: Duration,
    /// DNS names of the serving certificate; the aggregator checks `<svc>.<ns>.svc`.
    pub dns_names: Vec<String>,
}

impl Policy {
    /// Names of the Service `service` in `namespace`, the way clients in the cluster and
    /// the aggregator address it.
    pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            format!("{service}.{namespace}"),
            service.to_string(),
        ]
    }
}

/// PEM material as stored in the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// Trust bundle, current CA first.
    pub bundle: String,
    /// Current CA's private key.
    pub ca_key: String,
    /// Serving certificate.
    pub cert: String,
    /// Serving key.
    pub key: String,
}

impl Material {
    /// From Secret data; `None` when a key is missing or not UTF-8.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Option<Material> {
        let get = |k: &str| String::from_utf8(data.get(k)?.clone()).ok();
        Some(Material {
            bundle: get(CA_CRT)?,
            ca_key: get(CA_KEY)?,
            cert: get(TLS_CRT)?,
            key: get(TLS_KEY)?,
        })
    }

    /// As Secret data.
    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (CA_CRT.to_string(), self.bundle.clone().into_bytes()),
            (CA_KEY.to_string(), self.ca_key.clone().into_bytes()),
            (TLS_CRT.to_string(), self.cert.clone().into_bytes()),
            (TLS_KEY.to_string(), self.key.clone().into_bytes()),
        ])
    }

    /// The bundle's certificates, DER.
    pub fn bundle_der(&self) -> Vec<CertificateDer<'static>> {
        parse_bundle(&self.bundle)
    }

    /// The current CA (first in the bundle).
    pub fn current_ca(&self) -> Option<CertificateDer<'static>> {
        self.bundle_der().into_iter().next()
    }
}

/// The certificates of a PEM bundle (unreadable blocks are skipped).
pub fn parse_bundle(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// New material and why it changed (for the log).
#[derive(Debug)]
pub struct Renewal {
    /// What to store.
    pub material: Material,
    /// Why.
    pub reason: String,
}

/// Generating a certificate failed (the crypto library refused; not expected).
#[derive(Debug, thiserror::Error)]
#[error("generating a certificate: {0}")]
pub struct CertError(#[from] rcgen::Error);

/// What to store next, or `None` when `existing` is fine at `now`. `ca_published` says
/// whether every APIService the operator manages already trusts the current CA.
pub fn renew(
    existing: Option<&Material>,
    policy: &Policy,
    now: SystemTime,
    ca_published: bool,
) -> Result<Option<Renewal>, CertError> {
    let Some(m) = existing else {
        return fresh(policy, now, "no certificate yet").map(Some);
    };
    let stored: Vec<(CertificateDer<'static>, Info)> = m
        .bundle_der()
        .into_iter()
        .filter_map(|der| info(&der).map(|i| (der, i)))
        .collect();
    let usable = match (stored.first(), KeyPair::from_pem(&m.ca_key)) {
        (Some((_, ca)), Ok(key)) => ca.spki == key.public_key_raw() && ca.not_after > secs(now),
        _ => false,
    };
    if !usable {
        let reason = "the stored CA is unreadable, expired or does not match its key";
        return fresh(policy, now, reason).map(Some);
    }
    let mut reasons = Vec::new();
    // Expired CAs leave the bundle (never the current one: it is not expired).
    let mut bundle: Vec<(CertificateDer<'static>, Info)> = stored
        .iter()
        .filter(|(_, i)| i.not_after > secs(now))
        .cloned()
        .collect();
    if bundle.len() != stored.len() {
        reasons.push("an expired CA left the bundle");
    }
    let mut current = Ca {
        der: stored[0].0.clone(),
        info: stored[0].1.clone(),
        key_pem: m.ca_key.clone(),
    };
    let mut published = ca_published;
    if remaining(&current.info, now) < policy.ca_validity / 3 {
        current = new_ca(policy, now)?;
        bundle.insert(0, (current.der.clone(), current.info.clone()));
        published = false;
        reasons.push("CA rotated (the new CA joins the bundle)");
    }

    let leaf = CertificateDer::from_pem_slice(m.cert.as_bytes())
        .ok()
        .and_then(|der| info(&der).map(|i| (der, i)));
    let leaf_key = KeyPair::from_pem(&m.key).ok();
    let at = UnixTime::since_unix_epoch(Duration::from_secs(secs(now).max(0) as u64));
    let leaf_reason = match (&leaf, &leaf_key) {
        (None, _) | (_, None) => Some("the serving certificate is unreadable"),
        (Some((_, l)), Some(k)) if l.spki != k.public_key_raw() => {
            Some("the serving certificate does not match its key")
        }
        (Some((_, l)), _) if sorted(&l.dns) != sorted(&policy.dns_names) => {
            Some("the Service names changed")
        }
        (Some((der, _)), _) if !bundle.iter().any(|(ca, _)| verifies(ca, der, at)) => {
            Some("the serving certificate is not signed by a trusted CA")
        }
        (Some((_, l)), _) if remaining(l, now) < policy.cert_validity / 3 => {
            Some("the serving certificate expires soon")
        }
        (Some((der, _)), _) if published && !verifies(&current.der, der, at) => {
            Some("the serving certificate moves to the new CA")
        }
        _ => None,
    };
    let (cert, key) = match leaf_reason {
        Some(reason) => {
            reasons.push(reason);
            new_leaf(policy, now, &current)?
        }
        None => (m.cert.clone(), m.key.clone()),
    };
    if reasons.is_empty() {
        return Ok(None);
    }
    Ok(Some(Renewal {
        material: Material {
            bundle: bundle.iter().map(|(der, _)| pem_of(der)).collect(),
            ca_key: current.key_pem,
            cert,
            key,
        },
        reason: reasons.join("; "),
    }))
}

/// A CA: its certificate and key.
struct Ca {
    der: CertificateDer<'static>,
    info: Info,
    key_pem: String,
}

/// A new CA and serving certificate.
fn fresh(policy: &Policy, now: SystemTime, reason: &str) -> Result<Renewal, CertError> {
    let ca = new_ca(policy, now)?;
    let (cert, key) = new_leaf(policy, now, &ca)?;
    Ok(Renewal {
        material: Material {
            bundle: pem_of(&ca.der),
            ca_key: ca.key_pem,
            cert,
            key,
        },
        reason: reason.to_string(),
    })
}

fn new_ca(policy: &Policy, now: SystemTime) -> Result<Ca, CertError> {
    let key = KeyPair::generate()?;
    let not_after = secs(now) + policy.ca_validity.as_secs() as i64;
    let mut params = CertificateParams::default();
    // The issue time in the name keeps successive CAs apart for chain building.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("chatgateway-operator custom-metrics CA {}", secs(now)),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = time_of(secs(now) - BACKDATE.as_secs() as i64);
    params.not_after = time_of(not_after);
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        der: cert.der().clone(),
        info: Info {
            not_after,
            spki: key.public_key_raw().to_vec(),
            dns: Vec::new(),
        },
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for the policy's names, signed by `ca`, never outliving it.
fn new_leaf(policy: &Policy, now: SystemTime, ca: &Ca) -> Result<(String, String), CertError> {
    let issuer = Issuer::from_ca_cert_der(&ca.der, KeyPair::from_pem(&ca.key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(policy.dns_names.clone())?;
    if let Some(first) = policy.dns_names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = time_of(secs(now) - BACKDATE.as_secs() as i64);
    let not_after = (secs(now) + policy.cert_validity.as_secs() as i64).min(ca.info.not_after);
    params.not_after = time_of(not_after);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What rotation needs to know about a certificate.
#[derive(Clone, Debug)]
struct Info {
    not_after: i64,
    spki: Vec<u8>,
    dns: Vec<String>,
}

fn info(der: &CertificateDer<'_>) -> Option<Info> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let dns = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Info {
        not_after: cert.validity().not_after.timestamp(),
        spki: cert.public_key().subject_public_key.data.to_vec(),
        dns,
    })
}

/// Whether `leaf` chains to `ca` as a server certificate at `at`.
pub fn verifies(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>, at: UnixTime) -> bool {
    let Ok(anchor) = webpki::anchor_from_trusted_cert(ca) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    cert.verify_for_usage(
        algorithms,
        &[anchor],
        &[],
        at,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .is_ok()
}

fn remaining(i: &Info, now: SystemTime) -> Duration {
    Duration::from_secs((i.not_after - secs(now)).max(0) as u64)
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn time_of(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

#[cfg(test)]
#[path = "certs_tests.rs"]
mod tests;
