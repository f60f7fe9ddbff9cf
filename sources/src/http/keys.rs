//! Request keys: the idempotency keys clients send, and the ids of signed
//! requests, each belonging to the credential that sent it (its
//! [`Scope`]).
//!
//! - An **idempotency key** makes a retry safe: a request with a key
//!   already admitted gets the first request's id and admits nothing; with
//!   a different body it is refused (422), as the IETF `Idempotency-Key`
//!   draft and Stripe do.
//! - A signed request's **`webhook-id`** makes a replay fail: once a
//!   request with that id is admitted, another is refused. Only admission
//!   marks an id, so a sender's retry after a 429 or 503 still gets in.
//!
//! Both are durable. A record carries its request's keys in its header, so
//! the keys of records still in the buffer come back with it after a
//! restart. When a checkpoint releases records, their keys move to a file
//! of released keys, kept for as long as each matters: a day for an
//! idempotency key, twice the signature tolerance for a webhook id.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::ids::Scope;

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum KeyKind {
    /// `Idempotency-Key`: a retry gets the first request's id.
    #[default]
    Idempotency,
    /// A signed request's `webhook-id`: a replay is refused.
    Webhook,
}

/// One key of one credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey {
    pub(crate) kind: KeyKind,
    pub(crate) scope: Scope,
    pub(crate) key: String,
}

/// A digest of a request's (decompressed) body: what tells a retry from
/// another request that reuses its key.
pub(crate) type Fingerprint = [u8; 16];

pub(crate) fn fingerprint(body: &[u8]) -> Fingerprint {
    Sha256::digest(body)[..16].try_into().expect("16 bytes")
}

/// A request key and its body's fingerprint, as a record's header and the
/// file of released keys hold them.
#[derive(Debug, Serialize, Deserialize)]
struct StoredKey {
    #[serde(default)]
    kind: KeyKind,
    #[serde(default)]
    scope: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    /// In the file: the record's offset, and when it was released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<u64>,
}

impl StoredKey {
    fn new(key: &RequestKey, body: Option<Fingerprint>) -> StoredKey {
        StoredKey {
            kind: key.kind,
            scope: key.scope.to_string(),
            key: key.key.clone(),
            body: body.map(|b| b.iter().map(|x| format!("{x:02x}")).collect()),
            offset: None,
            at: None,
        }
    }

    /// The key, and its fingerprint; a key written before keys had scopes
    /// belongs to `unscoped`.
    fn read(self, unscoped: Scope) -> (RequestKey, Option<Fingerprint>) {
        let scope = self.scope.parse().unwrap_or(unscoped);
        let body = self.body.as_deref().and_then(|hex| {
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect();
            bytes?.try_into().ok()
        });
        let key = RequestKey {
            kind: self.kind,
            scope,
            key: self.key,
        };
        (key, body)
    }
}

/// A record's first line: its metadata, `{}` or the request's keys.
pub(crate) fn record_header(keys: &[(RequestKey, Option<Fingerprint>)]) -> Vec<u8> {
    if keys.is_empty() {
        return b"{}".to_vec();
    }
    #[derive(Serialize)]
    struct Header {
        keys: Vec<StoredKey>,
    }
    let keys = keys
        .iter()
        .map(|(key, body)| StoredKey::new(key, *body))
        .collect();
    serde_json::to_vec(&Header { keys }).expect("JSON")
}

/// The keys in a record's header. A header of an earlier version,
/// `{"key": …}`, holds an idempotency key of `unscoped`.
fn header_keys(payload: &[u8], unscoped: Scope) -> Vec<(RequestKey, Option<Fingerprint>)> {
    #[derive(Deserialize)]
    struct Header {
        #[serde(default)]
        keys: Vec<StoredKey>,
        #[serde(default)]
        key: Option<String>,
    }
    let first = payload.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(header) = serde_json::from_slice::<Header>(first) else {
        return Vec::new();
    };
    let legacy = header.key.map(|key| StoredKey {
        kind: KeyKind::Idempotency,
        scope: String::new(),
        key,
        body: None,
        offset: None,
        at: None,
    });
    header
        .keys
        .into_iter()
        .chain(legacy)
        .map(|stored| stored.read(unscoped))
        .collect()
}

/// What a request with a key is to do.
pub(crate) enum Claim {
    /// An earlier request with the key was admitted as this record.
    Appended(u64),
    /// An earlier request with the key is being appended: wait for it.
    Wait(watch::Receiver<Option<u64>>),
    /// This request is the first: append, then [`RequestKeys::settle`].
    Append(watch::Sender<Option<u64>>),
    /// The key was used for a request with another body.
    OtherBody,
}

/// The keys of one stream: in memory, in records' headers, and in the
/// file of released keys.
pub(crate) struct RequestKeys {
    table: Mutex<Table>,
    file: PathBuf,
    /// How long a released webhook id is remembered.
    webhook_memory: Duration,
    /// The scope of keys written before keys had scopes.
    unscoped: Scope,
}

/// How long a released idempotency key is remembered.
pub(crate) const IDEMPOTENCY_MEMORY: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct Table {
    by_key: HashMap<RequestKey, Entry>,
    /// The keys of records not released yet, by offset: what a release
    /// hands on to the file, without a scan of them all.
    unreleased: BTreeMap<u64, Vec<RequestKey>>,
    /// Released keys of each kind, oldest first, with when (ms): forgotten
    /// from the front.
    released: HashMap<KeyKind, VecDeque<(u64, RequestKey)>>,
}

struct Entry {
    state: State,
    body: Option<Fingerprint>,
}

enum State {
    /// A request with this key is being appended; its offset comes here.
    Appending(watch::Receiver<Option<u64>>),
    Appended(u64),
}

impl RequestKeys {
    /// Keys kept in `file` once released; webhook ids remembered for
    /// `webhook_memory`.
    pub(crate) fn new(file: PathBuf, webhook_memory: Duration, unscoped: Scope) -> RequestKeys {
        RequestKeys {
            table: Mutex::default(),
            file,
            webhook_memory,
            unscoped,
        }
    }

    fn memory(&self, kind: KeyKind) -> Duration {
        match kind {
            KeyKind::Idempotency => IDEMPOTENCY_MEMORY,
            KeyKind::Webhook => self.webhook_memory,
        }
    }

    /// Claims `key` for a request whose body has `body`'s fingerprint.
    pub(crate) fn claim(&self, key: &RequestKey, body: Option<Fingerprint>) -> Claim {
        let mut table = self.table.lock().expect("keys");
        match table.by_key.get(key) {
            Some(entry) if entry.body.is_some() && body.is_some() && entry.body != body => {
                Claim::OtherBody
            }
            Some(Entry {
                state: State::Appended(offset),
                ..
            }) => Claim::Appended(*offset),
            Some(Entry {
                state: State::Appending(receiver),
                ..
            }) => Claim::Wait(receiver.clone()),
            None => {
                let (sender, receiver) = watch::channel(None);
                let state = State::Appending(receiver);
                table.by_key.insert(key.clone(), Entry { state, body });
                Claim::Append(sender)
            }
        }
    }

    /// The request that claimed `key` was admitted as the record at
    /// `offset`, or failed (`None`: a retry may claim the key again).
    pub(crate) fn settle(
        &self,
        key: &RequestKey,
        sender: watch::Sender<Option<u64>>,
        appended: Option<u64>,
    ) {
        let mut table = self.table.lock().expect("keys");
        match appended {
            Some(offset) => {
                table
                    .unreleased
                    .entry(offset)
                    .or_default()
                    .push(key.clone());
                if let Some(entry) = table.by_key.get_mut(key) {
                    entry.state = State::Appended(offset);
                }
                let _ = sender.send(Some(offset));
            }
            // Waiters see the sender go.
            None => {
                table.by_key.remove(key);
            }
        }
    }

    /// Remembers the keys of the records from `payloads` (offset and
    /// payload), still in the buffer after a restart.
    pub(crate) fn restore_unreleased<'a>(
        &self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) {
        let mut table = self.table.lock().expect("keys");
        for (offset, payload) in records {
            for (key, body) in header_keys(payload, self.unscoped) {
                table
                    .unreleased
                    .entry(offset)
                    .or_default()
                    .push(key.clone());
                let state = State::Appended(offset);
                table.by_key.insert(key, Entry { state, body });
            }
        }
    }

    /// Reads the file of released keys, keeping those still remembered
    /// (and rewriting it without the others).
    pub(crate) fn load_released(&self, now_ms: u64) -> std::io::Result<()> {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut kept = String::new();
        let mut table = self.table.lock().expect("keys");
        for line in text.lines() {
            let Ok(stored) = serde_json::from_str::<StoredKey>(line) else {
                continue;
            };
            let (Some(offset), Some(at)) = (stored.offset, stored.at) else {
                continue;
            };
            if now_ms.saturating_sub(at) >= self.memory(stored.kind).as_millis() as u64 {
                continue;
            }
            let (key, body) = stored.read(self.unscoped);
            table
                .released
                .entry(key.kind)
                .or_default()
                .push_back((at, key.clone()));
            let state = State::Appended(offset);
            table.by_key.insert(key, Entry { state, body });
            kept.push_str(line);
            kept.push('\n');
        }
        drop(table);
        std::fs::write(&self.file, kept)
    }

    /// The records before `offset` are released: their keys go to the file
    /// (synced before this returns), and keys released long enough ago are
    /// forgotten.
    pub(crate) fn release(&self, offset: u64, now_ms: u64) -> std::io::Result<()> {
        let mut lines = Vec::new();
        {
            let mut table = self.table.lock().expect("keys");
            let later = table.unreleased.split_off(&offset);
            let released = std::mem::replace(&mut table.unreleased, later);
            for (offset, keys) in released {
                for key in keys {
                    let body = table.by_key.get(&key).and_then(|e| e.body);
                    let mut stored = StoredKey::new(&key, body);
                    stored.offset = Some(offset);
                    stored.at = Some(now_ms);
                    serde_json::to_writer(&mut lines, &stored).expect("JSON");
                    lines.push(b'\n');
                    table
                        .released
                        .entry(key.kind)
                        .or_default()
                        .push_back((now_ms, key));
                }
            }
            self.forget_old(&mut table, now_ms);
        }
        if lines.is_empty() {
            return Ok(());
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        file.write_all(&lines)?;
        file.sync_data()
    }

    fn forget_old(&self, table: &mut Table, now_ms: u64) {
        let Table {
            by_key, released, ..
        } = table;
        for (kind, queue) in released.iter_mut() {
            let memory = self.memory(*kind).as_millis() as u64;
            while let Some((at, _)) = queue.front() {
                if now_ms.saturating_sub(*at) < memory {
                    break;
                }
                let (_, key) = queue.pop_front().expect("a front");
                by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &std::path::Path) -> RequestKeys {
        let unscoped: Scope = "0000000000000000".parse().unwrap();
        RequestKeys::new(dir.join("keys.jsonl"), Duration::from_secs(600), unscoped)
    }

    fn key(kind: KeyKind, scope: &str, key: &str) -> RequestKey {
        RequestKey {
            kind,
            scope: scope.parse().unwrap(),
            key: key.into(),
        }
    }

    #[test]
    fn keys_come_back_from_headers_and_the_released_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ("00000000000000aa", "00000000000000bb");
        let retry = key(KeyKind::Idempotency, a, "order-1");
        let hook = key(KeyKind::Webhook, a, "msg_1");
        let body = fingerprint(b"{}");
        let header = record_header(&[(retry.clone(), Some(body)), (hook.clone(), None)]);
        let mut payload = header.clone();
        payload.extend_from_slice(b"\n{}");

        let first = keys(dir.path());
        first.restore_unreleased([(7, payload.as_slice())]);
        assert!(matches!(
            first.claim(&retry, Some(body)),
            Claim::Appended(7)
        ));
        assert!(matches!(
            first.claim(&retry, Some(fingerprint(b"[]"))),
            Claim::OtherBody
        ));
        assert!(matches!(first.claim(&hook, None), Claim::Appended(7)));
        // Another credential's key of the same name is another key.
        let other = key(KeyKind::Idempotency, b, "order-1");
        assert!(matches!(first.claim(&other, Some(body)), Claim::Append(_)));
        first.release(8, 1_000).unwrap();

        let second = keys(dir.path());
        second.load_released(2_000).unwrap();
        assert!(matches!(
            second.claim(&retry, Some(body)),
            Claim::Appended(7)
        ));
        assert!(matches!(second.claim(&hook, None), Claim::Appended(7)));
        // Past its memory, a webhook id is forgotten; the idempotency key
        // is kept for a day.
        let third = keys(dir.path());
        third.load_released(1_000 + 600_000).unwrap();
        assert!(matches!(third.claim(&hook, None), Claim::Append(_)));
        assert!(matches!(
            third.claim(&retry, Some(body)),
            Claim::Appended(7)
        ));
    }

    #[test]
    fn a_header_of_the_earlier_version_holds_an_unscoped_idempotency_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        keys.restore_unreleased([
            (3, &b"{\"key\":\"old\"}\n{}"[..]),
            (4, &b"{\"key\":null}\n{}"[..]),
        ]);
        let old = key(KeyKind::Idempotency, "0000000000000000", "old");
        assert!(matches!(keys.claim(&old, None), Claim::Appended(3)));
        assert_eq!(record_header(&[]), b"{}");
    }

    #[test]
    fn a_failed_append_frees_the_key_for_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let k = key(KeyKind::Webhook, "0000000000000001", "msg");
        let Claim::Append(sender) = keys.claim(&k, None) else {
            panic!("first claim")
        };
        assert!(matches!(keys.claim(&k, None), Claim::Wait(_)));
        keys.settle(&k, sender, None);
        assert!(matches!(keys.claim(&k, None), Claim::Append(_)));
    }
}
