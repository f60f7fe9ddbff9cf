//! Redis Cluster's hash slots: which slot a key lives in, and a hash tag
//! for each slot, so that a checkpoint's marker can sit beside the keys
//! it covers (a script may only touch keys of one slot).

use std::sync::OnceLock;

/// How many hash slots a cluster has.
pub(crate) const SLOTS: u16 = 16384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the text between
/// the first `{` and the next `}`, if not empty), else of all of it.
pub(crate) fn slot(key: &str) -> u16 {
    crc16(hash_tag(key).unwrap_or(key).as_bytes()) % SLOTS
}

/// The hash tag of `key`, if it has one.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

/// A short text whose hash tag (`{text}`) puts a key in `slot`.
pub(crate) fn tag_of(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        // Numbers in turn until every slot has one: about 170,000.
        let mut tags = vec![String::new(); SLOTS as usize];
        let mut missing = SLOTS as usize;
        let mut n = 0u64;
        while missing > 0 {
            let text = n.to_string();
            let tag = &mut tags[(crc16(text.as_bytes()) % SLOTS) as usize];
            if tag.is_empty() {
                *tag = text;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[slot as usize]
}

/// CRC16-CCITT (XMODEM), as Redis Cluster computes it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_redis_cluster_documents() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot("foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
    }

    #[test]
    fn every_slot_has_a_tag_that_leads_to_it() {
        for s in [0, 1, 4242, SLOTS - 1] {
            assert_eq!(slot(&format!("marker:{{{}}}", tag_of(s))), s);
        }
    }
}
