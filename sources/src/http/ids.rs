//! Request ids and scopes.
//!
//! A request's id names its record in the buffer, but must not give the
//! record's offset away: offsets count requests, so sequential ids would
//! tell any client the stream's volume. An id is the offset and the
//! requester's scope, encrypted as one AES block under the buffer's own key
//! (kept beside its segments). It is the same for every retry of a request,
//! looks random, and decrypts to the offset only together with the scope
//! of the credential that posted it: a client polling another's id learns
//! nothing, not even that it exists.
//!
//! A scope is what a credential's idempotency keys and request ids belong
//! to: a keyed hash of the bearer token or signing secret, so that neither
//! is kept on disk.

use std::fmt;
use std::io::Write;
use std::path::Path;

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The key file in the buffer's directory.
const KEY_FILE: &str = "request-ids.key";

/// Who a request is from, for its keys and its id: 8 bytes derived from
/// its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Scope([u8; 8]);

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for Scope {
    type Err = ();

    fn from_str(text: &str) -> Result<Scope, ()> {
        Ok(Scope(decode_hex(text).ok_or(())?))
    }
}

/// Makes and reads the ids of one stream's requests.
pub(crate) struct RequestIds {
    cipher: Aes128,
    scope_key: [u8; 16],
}

impl RequestIds {
    /// The ids of the buffer in `dir`, whose key is read from it, or made
    /// and kept there on first use.
    pub(crate) fn open(dir: &Path) -> std::io::Result<RequestIds> {
        let path = dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(key) => key,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => make_key(&path)?,
            Err(e) => return Err(e),
        };
        let key: [u8; 32] = key.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not 32 bytes; delete it to make a new key (earlier request ids then stop working)", path.display()),
            )
        })?;
        let (cipher_key, scope_key) = key.split_at(16);
        Ok(RequestIds {
            cipher: Aes128::new(GenericArray::from_slice(cipher_key)),
            scope_key: scope_key.try_into().expect("16 bytes"),
        })
    }

    /// The scope of a credential (`kind` tells tokens from secrets).
    pub(crate) fn scope(&self, kind: &str, credential: &[u8]) -> Scope {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.scope_key).expect("HMAC takes any key");
        mac.update(kind.as_bytes());
        mac.update(b"\0");
        mac.update(credential);
        let digest = mac.finalize().into_bytes();
        Scope(digest[..8].try_into().expect("8 bytes"))
    }

    /// The id of the request at `offset`, posted in `scope`.
    pub(crate) fn id(&self, offset: u64, scope: Scope) -> String {
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&offset.to_be_bytes());
        block[8..].copy_from_slice(&scope.0);
        let mut block = GenericArray::from(block);
        self.cipher.encrypt_block(&mut block);
        hex::encode(block)
    }

    /// The offset of the request `id` names, if it was posted in `scope`.
    pub(crate) fn offset(&self, id: &str, scope: Scope) -> Option<u64> {
        let block: [u8; 16] = decode_hex(id)?;
        let mut block = GenericArray::from(block);
        self.cipher.decrypt_block(&mut block);
        (block[8..] == scope.0).then(|| u64::from_be_bytes(block[..8].try_into().expect("8 bytes")))
    }
}

/// Makes a key file of 32 random bytes, readable by its owner only. Of two
/// processes racing to make it, one wins and both read its key.
fn make_key(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(std::io::Error::other)?;
    let staged = path.with_extension(format!("{}.tmp", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&staged)?;
        file.write_all(&key)?;
        file.sync_all()?;
    }
    match std::fs::hard_link(&staged, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
    }
    std::fs::remove_file(&staged)?;
    std::fs::read(path)
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_opaque_and_readable_only_in_their_scope() {
        let dir = tempfile::tempdir().unwrap();
        let ids = RequestIds::open(dir.path()).unwrap();
        let (alice, bob) = (ids.scope("token", b"alice"), ids.scope("token", b"bob"));
        assert_ne!(alice, bob);
        let first = ids.id(0, alice);
        assert_eq!(first.len(), 32);
        assert_eq!(ids.id(0, alice), first, "a retry gets the same id");
        assert_ne!(ids.id(1, alice), first);
        assert_eq!(ids.offset(&first, alice), Some(0));
        assert_eq!(ids.offset(&ids.id(41, alice), alice), Some(41));
        assert_eq!(ids.offset(&first, bob), None);
        assert_eq!(ids.offset("0", alice), None);
        assert_eq!(ids.offset(&"zz".repeat(16), alice), None);
        // Neighbouring offsets share no visible pattern.
        let (a, b) = (ids.id(1000, alice), ids.id(1001, alice));
        let same = a.bytes().zip(b.bytes()).filter(|(x, y)| x == y).count();
        assert!(same < 12, "{a} {b}");
        // The key is kept: the same ids after a restart.
        let reopened = RequestIds::open(dir.path()).unwrap();
        assert_eq!(reopened.id(0, reopened.scope("token", b"alice")), first);
        assert_eq!(alice.to_string().parse::<Scope>(), Ok(alice));
    }
}
