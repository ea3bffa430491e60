//! What the harness reads of a cluster: the lines of `CLUSTER NODES`, and the slot of a
//! key.

/// One line of `CLUSTER NODES`.
pub(super) struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: String,
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn parse(line: &str) -> Option<NodeLine> {
        let f: Vec<&str> = line.split(' ').collect();
        let addr = f.get(1)?.split('@').next()?;
        let port = addr.rsplit(':').next()?.parse().ok()?;
        let slots = f
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|x| (x, x)),
            })
            .collect();
        Some(NodeLine {
            id: f.first()?.to_string(),
            port,
            flags: f.get(2)?.to_string(),
            slots,
        })
    }
}

/// The cluster slot of a key (CRC16 of its hash tag, mod 16384), as Redis computes it.
pub fn slot(key: &str) -> u16 {
    let k = key.as_bytes();
    let tagged = k.iter().position(|&b| b == b'{').and_then(|open| {
        let close = k[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &k[open + 1..open + 1 + close])
    });
    let k = tagged.unwrap_or(k);
    let mut crc: u16 = 0;
    for &b in k {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(super::slot("123456789"), 12739);
        assert_eq!(super::slot("{user1000}.following"), super::slot("user1000"));
        assert_eq!(super::slot("foo{}{bar}"), super::slot("foo{}{bar}"));
        assert_eq!(super::slot("foo"), 12182);
    }
}
