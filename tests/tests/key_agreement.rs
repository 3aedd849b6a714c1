//! The key server and the data plane derive content keys independently (DESIGN.md §5); an asset
//! encrypted under one's key must open under the other's. If these ever disagree, every licensed
//! asset becomes unreadable — so the agreement is checked here, for arbitrary inputs.

use csapfs::format::{AssetId, Header, KeyId, ScopeId, Suite, DEFAULT_CHUNK_SIZE};
use csapfs::stream::{decrypt_stream, encrypt_stream};
use csapfs::{ContentKey, Seed};
use proptest::prelude::*;

proptest! {
    #[test]
    fn keyserver_and_csapfs_derive_the_same_content_key(seed in any::<[u8; 32]>(), id in any::<[u8; 16]>()) {
        let server = keyserver::keys::derive_content_key(&seed, &id);
        let local = csapfs::derive_content_key(&Seed::from_bytes(seed), &AssetId(id));
        prop_assert_eq!(&*server, local.as_bytes());
    }
}

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
    let licensed = ContentKey::from_bytes(*keyserver::keys::derive_content_key(
        &seed,
        &header.asset_id.0,
    ));
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
}
