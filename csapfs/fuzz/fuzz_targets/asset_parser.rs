//! Fuzzes everything that reads untrusted asset bytes: the strict header decoder, the layout
//! math on the input's length, and the streaming decryptor (which must reject, never panic).
//! The input is taken as a whole asset file; a fixed seed keys it, so inputs built from a valid
//! asset (see the seed corpus docs/guide.md names (Fuzzing)) reach deep into chunk decoding.
#![no_main]

use csap_format::format::{Header, Layout};
use csap_format::stream::decrypt_stream;
use csap_format::{derive_content_key, Seed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::decode_unauthenticated(data) {
        let layout: Layout = header.layout();
        if let Ok(size) = layout.plain_size(data.len() as u64) {
            assert_eq!(layout.stored_len(size), data.len() as u64);
        }
    }
    let seed = Seed::from_bytes(std::array::from_fn(|i| i as u8));
    let mut out = Vec::new();
    if decrypt_stream(data, &mut out, |h| Ok(derive_content_key(&seed, &h.asset_id))).is_ok() {
        // Only an authentic asset decrypts; its plaintext is never longer than its ciphertext.
        assert!(out.len() < data.len());
    }
});
