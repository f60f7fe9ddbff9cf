//! Records that the Kinesis Producer Library aggregated: several user
//! records in one Kinesis record, which consumers split again.
//!
//! The format (as published with the KPL): the magic bytes `F3 89 9A C2`,
//! a protobuf `AggregatedRecord`, then the MD5 digest of the protobuf
//! bytes.
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! ```
//!
//! Two messages of three fields are read here by hand rather than through
//! a protobuf crate, whose code generation would take more than it gives.
//! As the KCL does, a record that starts with the magic bytes but fails
//! its digest or does not parse is taken as one plain record.

use md5::{Digest, Md5};

/// The first bytes of an aggregated record.
pub(crate) const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// One user record taken out of an aggregated record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserRecord<'a> {
    pub(crate) partition_key: &'a str,
    pub(crate) data: &'a [u8],
}

/// The user records in `data`, or `None` if it is a plain record.
pub(crate) fn deaggregate(data: &[u8]) -> Option<Vec<UserRecord<'_>>> {
    let body = data.strip_prefix(&MAGIC)?;
    if body.len() < 16 {
        return None;
    }
    let (message, digest) = body.split_at(body.len() - 16);
    if Md5::digest(message).as_slice() != digest {
        return None;
    }
    parse(message)
}

fn parse(message: &[u8]) -> Option<Vec<UserRecord<'_>>> {
    let mut keys = Vec::new();
    let mut records = Vec::new();
    let mut fields = Fields::new(message);
    while let Some(field) = fields.next()? {
        match field {
            (1, Value::Bytes(key)) => keys.push(std::str::from_utf8(key).ok()?),
            (3, Value::Bytes(record)) => records.push(parse_record(record)?),
            // Explicit hash keys place a record on a shard; once it is
            // read they no longer matter. Unknown fields are skipped.
            _ => {}
        }
    }
    records
        .into_iter()
        .map(|(key_index, data)| {
            let partition_key = keys.get(usize::try_from(key_index).ok()?)?;
            Some(UserRecord {
                partition_key,
                data,
            })
        })
        .collect()
}

/// A `Record`: its partition key index and its data.
fn parse_record(message: &[u8]) -> Option<(u64, &[u8])> {
    let mut key_index = None;
    let mut data = None;
    let mut fields = Fields::new(message);
    while let Some(field) = fields.next()? {
        match field {
            (1, Value::Varint(index)) => key_index = Some(index),
            (3, Value::Bytes(bytes)) => data = Some(bytes),
            _ => {}
        }
    }
    Some((key_index?, data?))
}

/// A field's value, by wire type.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a protobuf message, in order.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(message: &'a [u8]) -> Self {
        Fields { rest: message }
    }

    /// The next field: `Some(None)` at the end, `None` if malformed.
    fn next(&mut self) -> Option<Option<(u64, Value<'a>)>> {
        if self.rest.is_empty() {
            return Some(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                if len > self.rest.len() {
                    return None;
                }
                let (bytes, rest) = self.rest.split_at(len);
                self.rest = rest;
                Value::Bytes(bytes)
            }
            5 => self.skip(4)?,
            _ => return None,
        };
        Some(Some((tag >> 3, value)))
    }

    fn skip(&mut self, len: usize) -> Option<Value<'a>> {
        self.rest = self.rest.get(len..)?;
        Some(Value::Fixed)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, byte) in self.rest.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Some(value);
            }
        }
        None
    }
}

/// Builds an aggregated record of `(partition key, data)` user records,
/// as the KPL writes them (for producers, and for tests of consumers).
pub fn aggregate(records: &[(&str, &[u8])]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    fn bytes(out: &mut Vec<u8>, field: u64, value: &[u8]) {
        varint(out, (field << 3) | 2);
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
    let mut keys: Vec<&str> = Vec::new();
    let mut message = Vec::new();
    let mut bodies = Vec::new();
    for (key, data) in records {
        let index = keys.iter().position(|k| k == key).unwrap_or_else(|| {
            keys.push(key);
            keys.len() - 1
        });
        let mut record = Vec::new();
        varint(&mut record, 1 << 3);
        varint(&mut record, index as u64);
        bytes(&mut record, 3, data);
        bodies.push(record);
    }
    for key in &keys {
        bytes(&mut message, 1, key.as_bytes());
    }
    for record in &bodies {
        bytes(&mut message, 3, record);
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&message);
    out.extend_from_slice(&Md5::digest(&message));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_what_was_aggregated() {
        let record = aggregate(&[("a", b"{\"id\":1}"), ("b", b"{\"id\":2}"), ("a", b"")]);
        let users = deaggregate(&record).unwrap();
        assert_eq!(
            users,
            vec![
                UserRecord {
                    partition_key: "a",
                    data: b"{\"id\":1}"
                },
                UserRecord {
                    partition_key: "b",
                    data: b"{\"id\":2}"
                },
                UserRecord {
                    partition_key: "a",
                    data: b""
                },
            ]
        );
    }

    #[test]
    fn plain_and_damaged_records_are_taken_whole() {
        assert_eq!(deaggregate(b"{\"id\":1}"), None);
        let mut record = aggregate(&[("a", b"x")]);
        let last = record.len() - 1;
        record[last] ^= 1;
        assert_eq!(deaggregate(&record), None, "digest does not match");
        let mut truncated = MAGIC.to_vec();
        truncated.extend_from_slice(&[0x1A, 0x05, 0x08]);
        let digest = Md5::digest(&truncated[4..]);
        truncated.extend_from_slice(&digest);
        assert_eq!(deaggregate(&truncated), None, "a field runs past the end");
    }

    #[test]
    fn a_key_index_out_of_the_table_is_not_an_aggregate() {
        let mut message = Vec::new();
        // records { partition_key_index: 3, data: "x" } with no key table
        message.extend_from_slice(&[0x1A, 0x05, 0x08, 0x03, 0x1A, 0x01, b'x']);
        let mut record = MAGIC.to_vec();
        record.extend_from_slice(&message);
        record.extend_from_slice(&Md5::digest(&message));
        assert_eq!(deaggregate(&record), None);
    }
}
