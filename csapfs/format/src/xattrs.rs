//! The user extended attributes of one asset, sealed together under the asset's key
//! (FORMAT.md §11): names and values are both encrypted, bound to the asset by its id, and a
//! fresh nonce is drawn at every change. Where the sealed bytes are kept is the storage's
//! business (the local backend: one extended attribute of the backing file).

use std::collections::BTreeMap;

use zeroize::Zeroize;

use crate::crypto::{random_nonce, xattr_keys, ContentKey, RandomnessUnavailable};
use crate::format::{AssetId, Header, NONCE_LEN, TAG_LEN};

/// The only encoding version this code reads and writes (byte 0 of the sealed bytes).
pub const XATTRS_VERSION: u8 = 1;
/// Longest attribute name, as on Linux (`XATTR_NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Associated data prefix; the asset id follows it.
const AAD_PREFIX: &[u8; 14] = b"csap v1 xattrs";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XattrError {
    /// Tampered, cut, moved from another asset, or sealed under another key.
    #[error("the sealed attributes failed authentication (tampered, or not this asset's); none are shown")]
    Authentication,
    #[error("sealed attributes of encoding version {0}; this reader knows version 1")]
    UnknownVersion(u8),
    /// Authentic, but not a well-formed list: a writer bug. Nothing of it is used.
    #[error("the sealed attributes are authentic but malformed")]
    Malformed,
    #[error("an attribute name must be 1 to 255 bytes")]
    NameLength,
}

/// Attribute names and values of one asset, in name order. Both are the user's data, so both are
/// zeroized when dropped.
#[derive(Default)]
pub struct Xattrs {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Xattrs {
    pub fn new() -> Xattrs {
        Xattrs::default()
    }

    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.entries.get(name).map(Vec::as_slice)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.entries.contains_key(name)
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(&mut self, name: &[u8], value: &[u8]) -> Result<(), XattrError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(XattrError::NameLength);
        }
        if let Some(mut old) = self.entries.insert(name.to_vec(), value.to_vec()) {
            old.zeroize();
        }
        Ok(())
    }

    /// Removes `name`; false if there was no such attribute.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        match self.entries.remove_entry(name) {
            Some((mut name, mut value)) => {
                name.zeroize();
                value.zeroize();
                true
            }
            None => false,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.keys().map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Seals every attribute for the asset of (authenticated) `header` under its content key,
    /// with a fresh nonce: `version ‖ nonce ‖ ciphertext ‖ tag`. Without randomness nothing is
    /// sealed (a nonce is never made up).
    pub fn seal(
        &self,
        header: &Header,
        key: &ContentKey,
    ) -> Result<Vec<u8>, RandomnessUnavailable> {
        let plain_len: usize = self
            .entries
            .iter()
            .map(|(name, value)| 1 + name.len() + 4 + value.len())
            .sum();
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plain_len + TAG_LEN);
        let nonce = random_nonce()?;
        sealed.push(XATTRS_VERSION);
        sealed.extend_from_slice(&nonce);
        for (name, value) in &self.entries {
            // Lengths are bounded by `insert` (names) and by the kernel (values ≤ 64 KiB).
            sealed.push(name.len() as u8);
            sealed.extend_from_slice(name);
            sealed.extend_from_slice(&(value.len() as u32).to_le_bytes());
            sealed.extend_from_slice(value);
        }
        let keys = xattr_keys(header.suite, key);
        let tag = keys.seal_in_place(&nonce, &aad(&header.asset_id), &mut sealed[1 + NONCE_LEN..]);
        sealed.extend_from_slice(&tag);
        Ok(sealed)
    }

    /// Authenticates and decrypts `sealed` for the asset of (authenticated) `header`. Nothing of
    /// it is returned unless the whole of it authenticates and parses.
    pub fn open(sealed: &[u8], header: &Header, key: &ContentKey) -> Result<Xattrs, XattrError> {
        let (&version, rest) = sealed.split_first().ok_or(XattrError::Authentication)?;
        if version != XATTRS_VERSION {
            return Err(XattrError::UnknownVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(XattrError::Authentication);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("NONCE_LEN bytes");
        let mut body = zeroize::Zeroizing::new(body.to_vec());
        let keys = xattr_keys(header.suite, key);
        let plain = keys
            .open_in_place(&nonce, &aad(&header.asset_id), &mut body)
            .map_err(|_| XattrError::Authentication)?;
        parse(plain)
    }
}

impl Drop for Xattrs {
    fn drop(&mut self) {
        for (mut name, mut value) in std::mem::take(&mut self.entries) {
            name.zeroize();
            value.zeroize();
        }
    }
}

impl std::fmt::Debug for Xattrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xattrs")
            .field("count", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn aad(asset_id: &AssetId) -> [u8; 30] {
    let mut aad = [0u8; 30];
    aad[..14].copy_from_slice(AAD_PREFIX);
    aad[14..].copy_from_slice(&asset_id.0);
    aad
}

/// Strict: names in increasing order (so each once), every length inside the bytes.
fn parse(mut plain: &[u8]) -> Result<Xattrs, XattrError> {
    let mut xattrs = Xattrs::new();
    let mut last: Option<&[u8]> = None;
    while let Some((&name_len, rest)) = plain.split_first() {
        let name_len = usize::from(name_len);
        if name_len == 0 || rest.len() < name_len + 4 {
            return Err(XattrError::Malformed);
        }
        let (name, rest) = rest.split_at(name_len);
        let (len, rest) = rest.split_at(4);
        let value_len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if rest.len() < value_len || last.is_some_and(|last| last >= name) {
            return Err(XattrError::Malformed);
        }
        let (value, rest) = rest.split_at(value_len);
        xattrs.entries.insert(name.to_vec(), value.to_vec());
        last = Some(name);
        plain = rest;
    }
    Ok(xattrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{KeyId, ScopeId, Suite};

    fn header(suite: Suite, id: u8) -> Header {
        let key_id = KeyId {
            scope: ScopeId([5; 16]),
            version: 1,
        };
        Header::new(suite, 65536, AssetId([id; 16]), key_id).unwrap()
    }

    fn sample() -> Xattrs {
        let mut x = Xattrs::new();
        x.insert(b"user.comment", b"grade: warm").unwrap();
        x.insert(b"user.empty", b"").unwrap();
        x
    }

    #[test]
    fn round_trips_in_both_suites_and_hides_names_and_values() {
        let key = ContentKey::from_bytes([9; 32]);
        for suite in [Suite::Gcm, Suite::CtrBlake3] {
            let h = header(suite, 1);
            let sealed = sample().seal(&h, &key).unwrap();
            for secret in [&b"comment"[..], b"warm"] {
                assert!(!sealed.windows(secret.len()).any(|w| w == secret));
            }
            let opened = Xattrs::open(&sealed, &h, &key).unwrap();
            assert_eq!(opened.get(b"user.comment"), Some(&b"grade: warm"[..]));
            assert_eq!(opened.get(b"user.empty"), Some(&b""[..]));
            let names: Vec<&[u8]> = opened.names().collect();
            assert_eq!(names, [&b"user.comment"[..], b"user.empty"]);
        }
    }

    #[test]
    fn every_seal_draws_a_fresh_nonce() {
        let (key, h) = (ContentKey::from_bytes([9; 32]), header(Suite::Gcm, 1));
        let (a, b) = (
            sample().seal(&h, &key).unwrap(),
            sample().seal(&h, &key).unwrap(),
        );
        assert_ne!(a[1..1 + NONCE_LEN], b[1..1 + NONCE_LEN]);
    }

    #[test]
    fn tampered_moved_or_wrongly_keyed_attributes_are_refused_whole() {
        let key = ContentKey::from_bytes([9; 32]);
        let h = header(Suite::Gcm, 1);
        let sealed = sample().seal(&h, &key).unwrap();
        for at in [1, 1 + NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert_eq!(
                Xattrs::open(&bad, &h, &key).unwrap_err(),
                XattrError::Authentication
            );
        }
        let other_asset = header(Suite::Gcm, 2);
        assert_eq!(
            Xattrs::open(&sealed, &other_asset, &key).unwrap_err(),
            XattrError::Authentication
        );
        let other_key = ContentKey::from_bytes([8; 32]);
        assert!(Xattrs::open(&sealed, &h, &other_key).is_err());
        assert!(Xattrs::open(&sealed[..sealed.len() - 1], &h, &key).is_err());
        assert!(Xattrs::open(&[], &h, &key).is_err());
        let mut future = sealed.clone();
        future[0] = 2;
        assert_eq!(
            Xattrs::open(&future, &h, &key).unwrap_err(),
            XattrError::UnknownVersion(2)
        );
    }

    #[test]
    fn names_are_bounded_and_removal_reports_absence() {
        let mut x = Xattrs::new();
        assert_eq!(x.insert(b"", b"v"), Err(XattrError::NameLength));
        assert_eq!(
            x.insert(&[b'a'; MAX_NAME_LEN + 1], b"v"),
            Err(XattrError::NameLength)
        );
        x.insert(&[b'a'; MAX_NAME_LEN], b"v").unwrap();
        assert!(x.remove(&[b'a'; MAX_NAME_LEN]));
        assert!(!x.remove(b"user.none"));
        assert!(x.is_empty());
    }

    #[test]
    fn an_authentic_but_malformed_list_is_refused() {
        assert_eq!(parse(&[0]).unwrap_err(), XattrError::Malformed);
        assert_eq!(
            parse(&[1, b'a', 9, 0, 0, 0]).unwrap_err(),
            XattrError::Malformed
        );
        // The same name twice (not in increasing order).
        let twice = [1, b'a', 0, 0, 0, 0, 1, b'a', 0, 0, 0, 0];
        assert_eq!(parse(&twice).unwrap_err(), XattrError::Malformed);
        assert!(parse(&[]).unwrap().is_empty());
    }
}
