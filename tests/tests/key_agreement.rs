//! The key server licenses content keys and the data plane derives them from key files; both go
//! through the one derivation in `csap-base` (its unit test pins the published vector). What is
//! left to check across crates: an asset sealed under the key the key server hands out opens
//! under the mount's own derivation, through the asset format's streams.

use csapfs::format::{AssetId, Header, KeyId, ScopeId, Suite, DEFAULT_CHUNK_SIZE};
use csapfs::stream::{decrypt_stream, encrypt_stream};
use csapfs::Seed;

#[test]
fn an_asset_sealed_under_a_licensed_key_opens_under_the_local_derivation() {
    let seed = [0x33; 32];
    let header = Header::new(
        Suite::Gcm,
        DEFAULT_CHUNK_SIZE,
        AssetId::random().unwrap(),
        KeyId {
            scope: ScopeId([9; 16]),
            version: 2,
        },
    )
    .unwrap();
    // What the key server's license handler does with a scope seed.
    let licensed = keyserver::keys::Seed::from_bytes(seed).content_key(&header.asset_id.0);
    let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let mut sealed = Vec::new();
    encrypt_stream(plain.as_slice(), &mut sealed, &header, &licensed).unwrap();
    let mut opened = Vec::new();
    decrypt_stream(sealed.as_slice(), &mut opened, |h| {
        Ok(csapfs::derive_content_key(
            &Seed::from_bytes(seed),
            &h.asset_id,
        ))
    })
    .unwrap();
    assert_eq!(opened, plain);
    // Another seed's key does not open it.
    let mut refused = Vec::new();
    assert!(decrypt_stream(sealed.as_slice(), &mut refused, |h| {
        Ok(csapfs::derive_content_key(
            &Seed::from_bytes([0x34; 32]),
            &h.asset_id,
        ))
    })
    .is_err());
}
