//! Issue, renewal and CA rotation, with the clock passed in.

use super::*;

const T0: u64 = 1_900_000_000;

fn at(offset: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + offset)
}

fn unix(offset: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(T0 + offset))
}

fn policy() -> Policy {
    Policy {
        ca_validity: Duration::from_secs(3000),
        cert_validity: Duration::from_secs(900),
        dns_names: Policy::service_names("cm", "ops"),
    }
}

fn leaf(m: &Material) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(m.cert.as_bytes()).expect("serving certificate")
}

fn first_issue() -> Material {
    let r = renew(None, &policy(), at(0), true)
        .expect("issued")
        .expect("something to store");
    assert_eq!(r.reason, "no certificate yet");
    r.material
}

#[test]
fn a_fresh_ca_signs_a_serving_certificate_for_the_service() {
    let m = first_issue();
    assert_eq!(m.bundle_der().len(), 1);
    let ca = m.current_ca().expect("ca");
    assert!(verifies(&ca, &leaf(&m), unix(1)));
    let i = info(&leaf(&m)).expect("parse");
    assert_eq!(
        sorted(&i.dns),
        sorted(&[
            "cm.ops.svc".into(),
            "cm.ops.svc.cluster.local".into(),
            "cm.ops".into(),
            "cm".into()
        ])
    );
    assert_eq!(i.not_after, (T0 + 900) as i64);
    // The key in the Secret is the serving certificate's.
    let key = KeyPair::from_pem(&m.key).expect("key");
    assert_eq!(i.spki, key.public_key_raw());
    // Round trip through Secret data.
    assert_eq!(Material::from_data(&m.to_data()), Some(m.clone()));
    // Nothing to do while it is young.
    assert!(renew(Some(&m), &policy(), at(100), true)
        .expect("checked")
        .is_none());
}

#[test]
fn the_serving_certificate_is_renewed_from_the_same_ca_before_it_expires() {
    let m = first_issue();
    let r = renew(Some(&m), &policy(), at(601), true)
        .expect("renewed")
        .expect("renewal due with a third of its life left");
    assert_eq!(r.reason, "the serving certificate expires soon");
    assert_eq!(r.material.bundle, m.bundle, "same CA, same caBundle");
    assert_eq!(r.material.ca_key, m.ca_key);
    assert_ne!(r.material.cert, m.cert);
    assert!(verifies(
        &m.current_ca().expect("ca"),
        &leaf(&r.material),
        unix(601)
    ));
}

#[test]
fn ca_rotation_publishes_the_new_ca_before_the_serving_certificate_moves() {
    let m = first_issue();
    let old_ca = m.current_ca().expect("ca");
    // Keep the serving certificate young so only the CA is due.
    let young = renew(Some(&m), &policy(), at(1900), true)
        .expect("ok")
        .expect("leaf renewed on the way");
    let m = young.material;
    // Two thirds into the CA's life: a new CA joins the bundle, first.
    let r = renew(Some(&m), &policy(), at(2001), true)
        .expect("rotated")
        .expect("rotation due");
    assert!(r.reason.contains("CA rotated"), "{}", r.reason);
    let bundle = r.material.bundle_der();
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle[1], old_ca, "the old CA stays trusted");
    assert_ne!(bundle[0], old_ca);
    assert_eq!(
        r.material.cert, m.cert,
        "the serving certificate waits until the APIServices trust the new CA"
    );
    let rotated = r.material;
    // Not yet published: nothing more to do.
    assert!(renew(Some(&rotated), &policy(), at(2002), false)
        .expect("checked")
        .is_none());
    // Published: the serving certificate moves to the new CA.
    let moved = renew(Some(&rotated), &policy(), at(2003), true)
        .expect("moved")
        .expect("move due");
    assert_eq!(moved.reason, "the serving certificate moves to the new CA");
    assert!(verifies(&bundle[0], &leaf(&moved.material), unix(2003)));
    assert_eq!(moved.material.bundle, rotated.bundle);
    // After the old CA expired (and the leaf was renewed meanwhile), it leaves the bundle.
    let later = renew(Some(&moved.material), &policy(), at(2700), true)
        .expect("ok")
        .expect("leaf renewal");
    let pruned = renew(Some(&later.material), &policy(), at(3001), true)
        .expect("pruned")
        .expect("expired CA removed");
    assert!(pruned.reason.contains("expired CA"), "{}", pruned.reason);
    assert_eq!(pruned.material.bundle_der(), vec![bundle[0].clone()]);
}

#[test]
fn new_service_names_get_a_new_certificate() {
    let m = first_issue();
    let mut p = policy();
    p.dns_names = Policy::service_names("renamed", "ops");
    let r = renew(Some(&m), &p, at(10), true)
        .expect("renewed")
        .expect("due");
    assert_eq!(r.reason, "the Service names changed");
    assert_eq!(r.material.bundle, m.bundle);
}

#[test]
fn unreadable_or_mismatched_material_starts_over() {
    let m = first_issue();
    let other = renew(None, &policy(), at(0), true)
        .expect("issued")
        .expect("material")
        .material;
    let cases = [
        Material {
            bundle: "garbage".into(),
            ..m.clone()
        },
        Material {
            ca_key: other.ca_key.clone(),
            ..m.clone()
        },
    ];
    for broken in cases {
        let r = renew(Some(&broken), &policy(), at(10), true)
            .expect("issued")
            .expect("starts over");
        assert!(r.reason.contains("stored CA"), "{}", r.reason);
        assert_ne!(r.material.bundle, m.bundle);
    }
    // A serving key that is not the certificate's, or a certificate from another CA.
    let swapped = Material {
        key: other.key.clone(),
        ..m.clone()
    };
    let r = renew(Some(&swapped), &policy(), at(10), true)
        .expect("ok")
        .expect("due");
    assert_eq!(r.reason, "the serving certificate does not match its key");
    let foreign = Material {
        cert: other.cert.clone(),
        key: other.key.clone(),
        ..m.clone()
    };
    let r = renew(Some(&foreign), &policy(), at(10), true)
        .expect("ok")
        .expect("due");
    assert_eq!(
        r.reason,
        "the serving certificate is not signed by a trusted CA"
    );
    // An expired CA is replaced outright.
    let r = renew(Some(&m), &policy(), at(3001), true)
        .expect("ok")
        .expect("due");
    assert!(r.reason.contains("expired"), "{}", r.reason);
}
