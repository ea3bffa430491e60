//! Which client a connection counts against in the per-address limits
//! (`limits.connectionsPerIp`, `limits.handshakesPerIp`, `admission.perIpRate`).
//!
//! An IPv4 address is one client. An IPv6 client is its /64: the smallest block a network
//! hands a subscriber (a home router or a phone gets a /64 or more), and every address in
//! it is the client's to use, so counting IPv6 addresses one by one would let one client
//! take a limit's allowance 2^64 times over. An IPv4 client reaching a dual-stack listener
//! arrives as an IPv4-mapped address (`::ffff:a.b.c.d`): that is its IPv4 address, not a
//! share of the /64 every IPv4 client would then fall into.

use std::net::{IpAddr, Ipv6Addr};

/// The key a connection from `ip` is counted under.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> IpAddr {
        limit_key(ip.parse().expect("an address"))
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2:abcd::7"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::1"), key("::"));
    }

    #[test]
    fn an_ipv4_client_is_its_address_however_it_arrives() {
        assert_eq!(key("192.0.2.7"), key("::ffff:192.0.2.7"));
        assert_eq!(
            key("::ffff:192.0.2.7"),
            "192.0.2.7".parse::<IpAddr>().expect("v4")
        );
        assert_ne!(key("::ffff:192.0.2.7"), key("::ffff:192.0.2.8"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }

    /// The node's three per-address limits count by the key: a second address of the same
    /// /64 finds the first's slot and bucket taken, another /64 does not.
    #[tokio::test]
    async fn every_per_address_limit_counts_a_64_once() {
        let mut config = crate::config::Config::default();
        config.auth.mode = crate::config::AuthMode::Insecure;
        config.server.listen = ([127, 0, 0, 1], 0).into();
        config.limits.connections_per_ip = 1;
        config.limits.handshakes_per_ip = 1;
        (config.admission.per_ip_rate, config.admission.per_ip_burst) = (0.001, 1);
        let node = crate::node::Node::new(config, Default::default()).expect("node");
        let [first, same, other]: [IpAddr; 3] =
            ["2001:db8::1", "2001:db8::2", "2001:db8:0:1::1"].map(|a| a.parse().expect("v6"));
        let held = (node.take_ip_slot(first), node.take_handshake_slot(first));
        assert!(held.0.is_some() && held.1.is_some());
        assert!(node.take_ip_slot(same).is_none(), "connectionsPerIp");
        assert!(node.take_handshake_slot(same).is_none(), "handshakesPerIp");
        assert!(node.admit_ip(first) && !node.admit_ip(same), "perIpRate");
        assert!(node.take_ip_slot(other).is_some() && node.take_handshake_slot(other).is_some());
        assert!(node.admit_ip(other));
    }
}
