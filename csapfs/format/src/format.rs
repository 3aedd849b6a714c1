//! The asset file format (normative spec: `csapfs/FORMAT.md`): header codec, offset math and
//! the sealing and opening of single chunks. No I/O but the random nonce a seal draws; no FUSE.
//!
//! ```text
//! asset  = header(96) ‖ chunk[0] ‖ chunk[1] ‖ … ‖ chunk[n-1]        n ≥ 1
//! chunk  = nonce(12) ‖ ciphertext(len) ‖ tag(16)                    1 ≤ len ≤ chunk_size,
//!                                                                    len = 0 only if n = 1
//! ```

use std::fmt;

use serde::Serialize;

use crate::crypto::{self, AssetKeys, AuthenticationFailed, RandomnessUnavailable};

/// "CSAP-AST": the first 8 bytes of every asset.
pub const MAGIC: [u8; 8] = *b"CSAP-AST";
/// The only format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Header length on disk: 64 bytes of fields and a 32-byte MAC.
pub const HEADER_LEN: u64 = 96;
/// Length of the authenticated header fields (the MAC input).
pub const HEADER_BODY_LEN: usize = 64;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a stored chunk adds to its plaintext, the same in both suites.
pub const CHUNK_OVERHEAD: u64 = (NONCE_LEN + TAG_LEN) as u64;
/// Default chunk size; see FORMAT.md "Chunk size" for the measurement behind it.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
pub const MIN_CHUNK_SIZE: u32 = 4 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Length of a chunk's AAD: asset id ‖ chunk index (u64 LE) ‖ final flag.
pub const AAD_LEN: usize = 16 + 8 + 1;

/// The chunk cipher suite, as stored in header byte 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Suite {
    /// AES-256-GCM per chunk (suite id 1, the default).
    #[serde(rename = "aes-256-gcm")]
    Gcm,
    /// AES-256-CTR, then a BLAKE3 keyed MAC over the ciphertext (suite id 2).
    #[serde(rename = "aes-256-ctr+blake3")]
    CtrBlake3,
}

impl Suite {
    pub fn id(self) -> u8 {
        match self {
            Suite::Gcm => 1,
            Suite::CtrBlake3 => 2,
        }
    }

    pub fn from_id(id: u8) -> Result<Suite, FormatError> {
        match id {
            1 => Ok(Suite::Gcm),
            2 => Ok(Suite::CtrBlake3),
            other => Err(FormatError::UnknownSuite(other)),
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Suite::Gcm => "aes-256-gcm",
            Suite::CtrBlake3 => "aes-256-ctr+blake3",
        })
    }
}

// Ids are csap-base's: the key server allocates them and parses them with the same code.
pub use csap_base::ids::{AssetId, ScopeId};

/// Which key an asset is encrypted under: a key scope at a seed version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct KeyId {
    pub scope: ScopeId,
    pub version: u32,
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/v{}", self.scope, self.version)
    }
}

/// Header flag bit 0: interior chunks stored as all-zero bytes are holes (read as zeros).
pub const FLAG_SPARSE: u8 = 0b0000_0001;
/// Header flag bit 1: a writer was extending the asset; `append_base` holds the plaintext size
/// before that extension (FORMAT.md §6, crash recovery).
pub const FLAG_APPENDING: u8 = 0b0000_0010;
/// Header flag bit 2: bytes 60..64 hold the asset's write generation (FORMAT.md §7), which the
/// key server records, so that an older authentic copy put back in place is refused.
pub const FLAG_GENERATION: u8 = 0b0000_0100;
const KNOWN_FLAGS: u8 = FLAG_SPARSE | FLAG_APPENDING | FLAG_GENERATION;

/// The decoded header fields of an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Header {
    pub suite: Suite,
    pub chunk_size: u32,
    pub asset_id: AssetId,
    pub key_id: KeyId,
    pub flags: u8,
    /// With [`FLAG_APPENDING`]: the plaintext size before the extension in progress; else 0.
    pub append_base: u64,
    /// With [`FLAG_GENERATION`]: the write generation (≥ 1); without it the asset is at
    /// generation 0 (as every asset written before generations existed).
    pub generation: u32,
}

impl Header {
    /// A header for a new asset with no flags set.
    pub fn new(
        suite: Suite,
        chunk_size: u32,
        asset_id: AssetId,
        key_id: KeyId,
    ) -> Result<Header, FormatError> {
        validate_chunk_size(chunk_size)?;
        Ok(Header {
            suite,
            chunk_size,
            asset_id,
            key_id,
            flags: 0,
            append_base: 0,
            generation: 0,
        })
    }

    /// The same header at write generation `generation` (0 clears [`FLAG_GENERATION`]).
    pub fn with_generation(mut self, generation: u32) -> Header {
        self.generation = generation;
        if generation == 0 {
            self.flags &= !FLAG_GENERATION;
        } else {
            self.flags |= FLAG_GENERATION;
        }
        self
    }

    pub fn is_sparse(&self) -> bool {
        self.flags & FLAG_SPARSE != 0
    }

    pub fn layout(&self) -> Layout {
        Layout {
            chunk_size: self.chunk_size as u64,
        }
    }

    /// The 64 authenticated bytes (FORMAT.md §Header).
    pub fn encode_body(&self) -> [u8; HEADER_BODY_LEN] {
        let mut b = [0u8; HEADER_BODY_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10] = self.suite.id();
        b[11] = self.flags;
        b[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[16..32].copy_from_slice(&self.asset_id.0);
        b[32..48].copy_from_slice(&self.key_id.scope.0);
        b[48..52].copy_from_slice(&self.key_id.version.to_le_bytes());
        b[52..60].copy_from_slice(&self.append_base.to_le_bytes());
        // Zero without FLAG_GENERATION (the reserved bytes of earlier writers).
        b[60..64].copy_from_slice(&self.generation.to_le_bytes());
        b
    }

    /// Encodes the full 96-byte header, MAC included.
    pub fn encode(&self, keys: &AssetKeys) -> [u8; HEADER_LEN as usize] {
        let body = self.encode_body();
        let mut out = [0u8; HEADER_LEN as usize];
        out[..HEADER_BODY_LEN].copy_from_slice(&body);
        out[HEADER_BODY_LEN..].copy_from_slice(&keys.header_mac(&body));
        out
    }

    /// Strict decode of the header fields WITHOUT checking the MAC (a reader needs the key id
    /// to find the key). Callers must call [`Header::verify`] before trusting any field.
    pub fn decode_unauthenticated(bytes: &[u8]) -> Result<Header, FormatError> {
        if bytes.len() < 8 || bytes[0..8] != MAGIC {
            return Err(FormatError::NotAnAsset);
        }
        if bytes.len() < HEADER_LEN as usize {
            return Err(FormatError::TruncatedHeader);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let suite = Suite::from_id(bytes[10])?;
        let flags = bytes[11];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::UnknownFlags(flags));
        }
        let chunk_size = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        validate_chunk_size(chunk_size)?;
        let append_base = u64::from_le_bytes(bytes[52..60].try_into().expect("8 bytes"));
        let generation = u32::from_le_bytes(bytes[60..64].try_into().expect("4 bytes"));
        if (flags & FLAG_APPENDING == 0 && append_base != 0)
            || (flags & FLAG_GENERATION == 0 && generation != 0)
        {
            return Err(FormatError::ReservedNotZero);
        }
        if flags & FLAG_GENERATION != 0 && generation == 0 {
            return Err(FormatError::ZeroGeneration);
        }
        Ok(Header {
            suite,
            chunk_size,
            asset_id: AssetId(bytes[16..32].try_into().expect("16 bytes")),
            key_id: KeyId {
                scope: ScopeId(bytes[32..48].try_into().expect("16 bytes")),
                version: u32::from_le_bytes(bytes[48..52].try_into().expect("4 bytes")),
            },
            flags,
            append_base,
            generation,
        })
    }

    /// Checks the header MAC of `bytes` (the 96 stored bytes) under `keys`.
    pub fn verify(bytes: &[u8], keys: &AssetKeys) -> Result<(), FormatError> {
        if bytes.len() < HEADER_LEN as usize {
            return Err(FormatError::TruncatedHeader);
        }
        keys.verify_header_mac(
            &bytes[..HEADER_BODY_LEN],
            &bytes[HEADER_BODY_LEN..HEADER_LEN as usize],
        )
        .map_err(|_| FormatError::HeaderAuthentication)
    }
}

fn validate_chunk_size(chunk_size: u32) -> Result<(), FormatError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) || !chunk_size.is_power_of_two() {
        return Err(FormatError::BadChunkSize(chunk_size));
    }
    Ok(())
}

/// Offset math between plaintext and the stored file. Every function is total and pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub chunk_size: u64,
}

/// What a stored length says about an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredLength {
    /// A well-formed length for this plaintext size.
    Valid(u64),
    /// No well-formed asset has this length (a torn or truncated tail). `whole_chunks_plain` is
    /// the plaintext covered by the whole stored chunks before the torn tail.
    Torn { whole_chunks_plain: u64 },
}

impl Layout {
    pub fn stored_chunk_size(&self) -> u64 {
        self.chunk_size + CHUNK_OVERHEAD
    }

    /// Number of chunks of an asset of `plain_size` bytes: at least one (an empty asset is a
    /// single empty final chunk, so that truncating a file to its header is detected).
    pub fn chunk_count(&self, plain_size: u64) -> u64 {
        plain_size.div_ceil(self.chunk_size).max(1)
    }

    /// Stored file length of an asset of `plain_size` bytes.
    pub fn stored_len(&self, plain_size: u64) -> u64 {
        HEADER_LEN + plain_size + self.chunk_count(plain_size) * CHUNK_OVERHEAD
    }

    /// Byte offset of chunk `index` in the stored file.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        HEADER_LEN + index * self.stored_chunk_size()
    }

    /// Plaintext length of chunk `index` in an asset of `plain_size` bytes.
    pub fn chunk_plain_len(&self, index: u64, plain_size: u64) -> u64 {
        plain_size
            .saturating_sub(index * self.chunk_size)
            .min(self.chunk_size)
    }

    /// Plaintext size of a stored file of `stored_len` bytes, computed without reading data.
    pub fn classify(&self, stored_len: u64) -> StoredLength {
        if stored_len < HEADER_LEN + CHUNK_OVERHEAD {
            return StoredLength::Torn {
                whole_chunks_plain: 0,
            };
        }
        let body = stored_len - HEADER_LEN;
        let full = body / self.stored_chunk_size();
        let rest = body % self.stored_chunk_size();
        match rest {
            0 => StoredLength::Valid(full * self.chunk_size),
            r if r == CHUNK_OVERHEAD && full == 0 => StoredLength::Valid(0),
            r if r > CHUNK_OVERHEAD => {
                StoredLength::Valid(full * self.chunk_size + r - CHUNK_OVERHEAD)
            }
            _ => StoredLength::Torn {
                whole_chunks_plain: full * self.chunk_size,
            },
        }
    }

    /// Strict form of [`Layout::classify`].
    pub fn plain_size(&self, stored_len: u64) -> Result<u64, FormatError> {
        match self.classify(stored_len) {
            StoredLength::Valid(size) => Ok(size),
            StoredLength::Torn { .. } => Err(FormatError::InvalidLength(stored_len)),
        }
    }
}

/// The AAD of chunk `index`: asset id ‖ index as u64 little-endian ‖ 1 if final else 0.
pub fn chunk_aad(asset_id: &AssetId, index: u64, is_final: bool) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    aad[..16].copy_from_slice(&asset_id.0);
    aad[16..24].copy_from_slice(&index.to_le_bytes());
    aad[24] = is_final as u8;
    aad
}

/// Seals `plain` as chunk `index` into `out` (nonce ‖ ciphertext ‖ tag) with a fresh random
/// nonce; without one (the OS RNG failed) nothing is written to `out`. `out` must be exactly
/// `plain.len() + CHUNK_OVERHEAD` long.
pub fn seal_chunk(
    keys: &AssetKeys,
    asset_id: &AssetId,
    index: u64,
    is_final: bool,
    plain: &[u8],
    out: &mut [u8],
) -> Result<(), RandomnessUnavailable> {
    let nonce = crypto::random_nonce()?;
    seal_chunk_under(keys, asset_id, index, is_final, &nonce, plain, out);
    Ok(())
}

/// [`seal_chunk`] with a caller-chosen nonce, for the fixed test vectors (FORMAT.md §Test
/// vectors) only: a nonce must never repeat under a key, so no build but tests has this.
#[cfg(feature = "test-vectors")]
pub fn seal_chunk_with_nonce(
    keys: &AssetKeys,
    asset_id: &AssetId,
    index: u64,
    is_final: bool,
    nonce: &[u8; NONCE_LEN],
    plain: &[u8],
    out: &mut [u8],
) {
    seal_chunk_under(keys, asset_id, index, is_final, nonce, plain, out)
}

fn seal_chunk_under(
    keys: &AssetKeys,
    asset_id: &AssetId,
    index: u64,
    is_final: bool,
    nonce: &[u8; NONCE_LEN],
    plain: &[u8],
    out: &mut [u8],
) {
    assert_eq!(
        out.len(),
        plain.len() + CHUNK_OVERHEAD as usize,
        "output buffer size"
    );
    let (nonce_out, rest) = out.split_at_mut(NONCE_LEN);
    let (data, tag_out) = rest.split_at_mut(plain.len());
    nonce_out.copy_from_slice(nonce);
    data.copy_from_slice(plain);
    let tag = keys.seal_in_place(nonce, &chunk_aad(asset_id, index, is_final), data);
    tag_out.copy_from_slice(&tag);
}

/// Verifies and decrypts a stored chunk in place; returns the plaintext, which is a sub-slice of
/// `stored`. On failure nothing of `stored` may be used.
pub fn open_chunk<'a>(
    keys: &AssetKeys,
    asset_id: &AssetId,
    index: u64,
    is_final: bool,
    stored: &'a mut [u8],
) -> Result<&'a mut [u8], AuthenticationFailed> {
    if stored.len() < CHUNK_OVERHEAD as usize {
        return Err(AuthenticationFailed);
    }
    let (nonce, data_and_tag) = stored.split_at_mut(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = (&*nonce).try_into().expect("12 bytes");
    keys.open_in_place(&nonce, &chunk_aad(asset_id, index, is_final), data_and_tag)
}

/// [`open_chunk`] for a chunk read apart: its nonce and tag in one place, its ciphertext in the
/// buffer the plaintext is wanted in (decrypted there in place). On failure `data` holds no
/// plaintext and must not be used.
pub fn open_chunk_detached(
    keys: &AssetKeys,
    asset_id: &AssetId,
    index: u64,
    is_final: bool,
    nonce: &[u8; NONCE_LEN],
    data: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), AuthenticationFailed> {
    keys.open_detached(nonce, &chunk_aad(asset_id, index, is_final), data, tag)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a csap asset (the file does not start with the CSAP-AST magic)")]
    NotAnAsset,
    #[error("the asset header is truncated")]
    TruncatedHeader,
    #[error("asset format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u16),
    #[error("unknown cipher suite id {0}")]
    UnknownSuite(u8),
    #[error("unknown header flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("invalid chunk size {0} (must be a power of two from 4 KiB to 16 MiB)")]
    BadChunkSize(u32),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("the header's generation flag is set with generation 0")]
    ZeroGeneration,
    #[error("the header does not authenticate: wrong key, or the header was tampered with")]
    HeaderAuthentication,
    #[error("stored length {0} is not a valid asset length: the file was truncated or extended")]
    InvalidLength(u64),
    #[error("{0:?} is not a 32-digit hex id")]
    BadId(String),
}

impl From<csap_base::ids::BadId> for FormatError {
    fn from(bad: csap_base::ids::BadId) -> Self {
        FormatError::BadId(bad.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ContentKey;
    use proptest::prelude::*;

    fn header() -> Header {
        Header::new(
            Suite::Gcm,
            DEFAULT_CHUNK_SIZE,
            AssetId([3; 16]),
            KeyId {
                scope: ScopeId([4; 16]),
                version: 2,
            },
        )
        .unwrap()
    }

    #[test]
    fn header_round_trips_and_authenticates() {
        let keys = AssetKeys::new(Suite::Gcm, &ContentKey::from_bytes([9; 32]));
        let bytes = header().encode(&keys);
        assert_eq!(Header::decode_unauthenticated(&bytes).unwrap(), header());
        Header::verify(&bytes, &keys).unwrap();
        let other = AssetKeys::new(Suite::Gcm, &ContentKey::from_bytes([8; 32]));
        assert_eq!(
            Header::verify(&bytes, &other),
            Err(FormatError::HeaderAuthentication)
        );
    }

    #[test]
    fn strict_decoding_rejects_unknown_values() {
        let keys = AssetKeys::new(Suite::Gcm, &ContentKey::from_bytes([9; 32]));
        let good = header().encode(&keys);
        let cases: [(usize, u8, FormatError); 5] = [
            (0, b'X', FormatError::NotAnAsset),
            (8, 2, FormatError::UnsupportedVersion(2)),
            (10, 9, FormatError::UnknownSuite(9)),
            (11, 0x80, FormatError::UnknownFlags(0x80)),
            (60, 1, FormatError::ReservedNotZero),
        ];
        for (at, value, expected) in cases {
            let mut bad = good;
            bad[at] = value;
            assert_eq!(Header::decode_unauthenticated(&bad), Err(expected));
        }
        let mut odd = good;
        odd[12..16].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(
            Header::decode_unauthenticated(&odd),
            Err(FormatError::BadChunkSize(5000))
        );
        assert_eq!(
            Header::decode_unauthenticated(&good[..50]),
            Err(FormatError::TruncatedHeader)
        );
    }

    #[test]
    fn layout_examples_from_format_md() {
        let l = Layout { chunk_size: 65536 };
        assert_eq!(l.stored_len(0), 96 + 28);
        assert_eq!(l.stored_len(1), 96 + 1 + 28);
        assert_eq!(l.stored_len(65536), 96 + 65536 + 28);
        assert_eq!(l.stored_len(65537), 96 + 65537 + 56);
        assert_eq!(l.stored_len(1 << 30), 96 + (1 << 30) + 16384 * 28);
        assert_eq!(
            l.classify(96),
            StoredLength::Torn {
                whole_chunks_plain: 0
            }
        );
        assert_eq!(
            l.classify(96 + 65564 + 10),
            StoredLength::Torn {
                whole_chunks_plain: 65536
            }
        );
        assert_eq!(
            l.classify(96 + 65564 + 28),
            StoredLength::Torn {
                whole_chunks_plain: 65536
            }
        );
    }

    proptest! {
        #[test]
        fn plain_size_inverts_stored_len(size in 0u64..(1 << 40), shift in 12u32..=24) {
            let l = Layout { chunk_size: 1 << shift };
            prop_assert_eq!(l.plain_size(l.stored_len(size)), Ok(size));
        }

        #[test]
        fn every_length_is_valid_for_at_most_one_size(len in 0u64..(1 << 22)) {
            let l = Layout { chunk_size: 4096 };
            if let Ok(size) = l.plain_size(len) {
                prop_assert_eq!(l.stored_len(size), len);
            }
        }
    }
}
