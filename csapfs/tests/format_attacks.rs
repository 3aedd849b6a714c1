//! Named attacks on the asset format, and round-trip properties of the library.
//!
//! Every attack must end in an error and never in plaintext: byte flips anywhere, chunk swaps,
//! reorders, splices from another asset, truncation at and between chunk boundaries, appended
//! garbage. Both suites are attacked.

use std::fs::{File, OpenOptions};
use std::io::Write;

use csapfs::asset::Asset;
use csapfs::format::{
    AssetId, Header, KeyId, ScopeId, Suite, CHUNK_OVERHEAD, HEADER_LEN, NONCE_LEN,
};
use csapfs::stream::{decrypt_stream, encrypt_stream};
use csapfs::{derive_content_key, AssetError, ContentKey, Seed};
use proptest::prelude::*;

const CHUNK: u32 = 4096;
const STORED: usize = CHUNK as usize + CHUNK_OVERHEAD as usize;
const H: usize = HEADER_LEN as usize;

fn seed() -> Seed {
    Seed::from_bytes([0x42; 32])
}

fn key_of(id: &AssetId) -> ContentKey {
    derive_content_key(&seed(), id)
}

fn header(suite: Suite, chunk: u32) -> Header {
    Header::new(
        suite,
        chunk,
        AssetId::random().unwrap(),
        KeyId {
            scope: ScopeId([1; 16]),
            version: 1,
        },
    )
    .unwrap()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

fn encrypt(suite: Suite, plain: &[u8]) -> Vec<u8> {
    let h = header(suite, CHUNK);
    let mut out = Vec::new();
    encrypt_stream(plain, &mut out, &h, &key_of(&h.asset_id)).unwrap();
    out
}

fn decrypt(asset: &[u8]) -> Result<Vec<u8>, AssetError> {
    let mut out = Vec::new();
    decrypt_stream(asset, &mut out, |h| Ok(key_of(&h.asset_id)))?;
    Ok(out)
}

/// Decrypts through the random-access path too (`Asset::open` + `read_at` of everything).
fn decrypt_random_access(asset: &[u8]) -> Result<Vec<u8>, AssetError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    std::fs::write(&path, asset).unwrap();
    let header = csapfs::asset::read_header(&File::open(&path).unwrap())?;
    let a = Asset::open(File::open(&path).unwrap(), &key_of(&header.asset_id))?;
    let mut out = vec![0u8; a.plain_size() as usize];
    let n = a.read_at(0, &mut out)?;
    out.truncate(n);
    Ok(out)
}

fn assert_rejected(asset: &[u8], what: &str) {
    assert!(decrypt(asset).is_err(), "stream decrypt accepted: {what}");
    assert!(
        decrypt_random_access(asset).is_err(),
        "random-access read accepted: {what}"
    );
}

const SUITES: [Suite; 2] = [Suite::Gcm, Suite::CtrBlake3];

/// A new, empty asset at `path` under `h`, open for reading and writing.
fn create_asset(path: &std::path::Path, h: Header) -> Asset {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    Asset::create(file, h, &key_of(&h.asset_id)).unwrap()
}

#[test]
fn every_single_byte_flip_is_rejected() {
    for suite in SUITES {
        let plain = pattern(2 * CHUNK as usize + 100);
        let asset = encrypt(suite, &plain);
        assert_eq!(decrypt(&asset).unwrap(), plain);
        for at in 0..asset.len() {
            let mut bad = asset.clone();
            bad[at] ^= 0x01;
            assert!(
                decrypt(&bad).is_err(),
                "{suite}: flip at byte {at} accepted"
            );
        }
        // Random-access reads for every header byte and a sample of body bytes.
        for at in (0..H).chain((H..asset.len()).step_by(97)) {
            let mut bad = asset.clone();
            bad[at] ^= 0x80;
            assert!(
                decrypt_random_access(&bad).is_err(),
                "{suite}: random access, flip at {at}"
            );
        }
    }
}

#[test]
fn chunk_swap_and_reorder_within_a_file_are_rejected() {
    for suite in SUITES {
        let asset = encrypt(suite, &pattern(3 * CHUNK as usize));
        let mut swapped = asset.clone();
        swapped[H..H + 2 * STORED].rotate_left(STORED);
        assert_rejected(&swapped, "swap of chunks 0 and 1");
        let mut reordered = asset.clone();
        reordered[H..].rotate_left(STORED);
        assert_rejected(&reordered, "rotation of all chunks");
    }
}

#[test]
fn splice_of_a_chunk_from_another_asset_is_rejected() {
    for suite in SUITES {
        let a = encrypt(suite, &pattern(2 * CHUNK as usize));
        let b = encrypt(suite, &pattern(2 * CHUNK as usize));
        let mut spliced = a.clone();
        spliced[H..H + STORED].copy_from_slice(&b[H..H + STORED]);
        assert_rejected(&spliced, "chunk 0 from another asset");
    }
}

#[test]
fn truncation_at_and_between_chunk_boundaries_is_rejected() {
    for suite in SUITES {
        let asset = encrypt(suite, &pattern(3 * CHUNK as usize + 10));
        for len in 0..asset.len() {
            assert!(
                decrypt(&asset[..len]).is_err(),
                "{suite}: truncation to {len} accepted"
            );
        }
        for boundary in [H, H + STORED, H + 2 * STORED, H + 3 * STORED] {
            assert_rejected(
                &asset[..boundary],
                &format!("truncation at boundary {boundary}"),
            );
        }
        // An empty asset cut to its header.
        let empty = encrypt(suite, b"");
        assert_eq!(decrypt(&empty).unwrap(), b"");
        assert_rejected(&empty[..H], "empty asset cut to its header");
    }
}

#[test]
fn appended_garbage_is_rejected() {
    for suite in SUITES {
        for plain_len in [10, CHUNK as usize] {
            let asset = encrypt(suite, &pattern(plain_len));
            let last_chunk = asset[asset.len()
                - (plain_len % CHUNK as usize)
                    .max(CHUNK as usize * (plain_len == CHUNK as usize) as usize)
                - CHUNK_OVERHEAD as usize..]
                .to_vec();
            for tail in [
                vec![0u8],
                vec![0u8; CHUNK_OVERHEAD as usize],
                vec![0xAA; STORED],
                last_chunk,
            ] {
                let extended = [asset.as_slice(), &tail].concat();
                assert_rejected(
                    &extended,
                    &format!("{} garbage bytes after {plain_len}", tail.len()),
                );
            }
        }
    }
}

#[test]
fn wrong_key_is_rejected_at_the_header() {
    let asset = encrypt(Suite::Gcm, b"secret frame");
    let mut out = Vec::new();
    let err = decrypt_stream(asset.as_slice(), &mut out, |h| {
        Ok(derive_content_key(&Seed::from_bytes([7; 32]), &h.asset_id))
    })
    .unwrap_err();
    assert!(err.to_string().contains("wrong key"), "{err}");
    assert!(out.is_empty());
}

#[test]
fn rewriting_a_chunk_never_reuses_a_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let h = header(Suite::Gcm, CHUNK);
    let mut asset = create_asset(&path, h);
    asset.write_at(0, &pattern(3 * CHUNK as usize)).unwrap();
    let mut seen = std::collections::HashSet::new();
    for round in 0..500u32 {
        asset
            .write_at(CHUNK as u64 + (round % 100) as u64, &round.to_le_bytes())
            .unwrap();
        let stored = std::fs::read(&path).unwrap();
        let nonce: [u8; NONCE_LEN] = stored[H + STORED..H + STORED + NONCE_LEN]
            .try_into()
            .unwrap();
        assert!(seen.insert(nonce), "nonce reused at round {round}");
    }
}

/// A write of many chunks is sealed in two halves on two threads (`Asset::write_at`): the asset
/// still holds exactly what was written, every chunk under its own fresh nonce, in a stored
/// file of exactly the format's length.
#[test]
fn writes_split_across_threads_match_the_plaintext_with_fresh_nonces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let h = header(Suite::Gcm, CHUNK);
    let mut asset = create_asset(&path, h);
    let mut model = pattern(300 << 10);
    asset.write_at(0, &model).unwrap();
    let big: Vec<u8> = (0..(1usize << 20) + 777)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    for offset in [5_000usize, 0, 200 << 10] {
        // An overwrite in place, an overwrite from 0, and one that extends the asset.
        asset.write_at(offset as u64, &big).unwrap();
        if model.len() < offset + big.len() {
            model.resize(offset + big.len(), 0);
        }
        model[offset..offset + big.len()].copy_from_slice(&big);
        let mut back = vec![0u8; model.len()];
        assert_eq!(asset.read_at(0, &mut back).unwrap(), model.len());
        assert!(back == model, "content after a write at {offset}");
    }
    let stored = std::fs::read(&path).unwrap();
    assert_eq!(
        stored.len() as u64,
        h.layout().stored_len(model.len() as u64)
    );
    let mut nonces = std::collections::HashSet::new();
    for chunk in stored[H..].chunks(STORED) {
        assert!(nonces.insert(chunk[..NONCE_LEN].to_vec()), "a nonce twice");
    }
}

#[test]
fn tampered_chunk_fails_only_its_own_range() {
    let plain = pattern(4 * CHUNK as usize);
    let mut asset = encrypt(Suite::Gcm, &plain);
    asset[H + 2 * STORED + 100] ^= 1; // inside chunk 2
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    std::fs::write(&path, &asset).unwrap();
    let header = csapfs::asset::read_header(&File::open(&path).unwrap()).unwrap();
    let a = Asset::open(File::open(&path).unwrap(), &key_of(&header.asset_id)).unwrap();
    let mut buf = vec![0u8; CHUNK as usize];
    for index in [0u64, 1, 3] {
        a.read_at(index * CHUNK as u64, &mut buf).unwrap();
        assert_eq!(
            buf,
            plain[(index * CHUNK as u64) as usize..][..CHUNK as usize]
        );
    }
    let err = a.read_at(2 * CHUNK as u64 + 5, &mut buf[..10]).unwrap_err();
    assert!(
        matches!(err, AssetError::Authentication { chunk_index: 2 }),
        "{err}"
    );
    assert_eq!(err.errno(), 5);
}

/// A read of many chunks is split across two threads (`Asset::read_at`): what it returns is
/// still exactly the plaintext, at any alignment, and a tampered chunk in either half fails the
/// whole read with that chunk's index.
#[test]
fn reads_split_across_threads_return_the_plaintext_or_fail_whole() {
    let plain = pattern(600 * CHUNK as usize + 123);
    for suite in SUITES {
        let asset = encrypt(suite, &plain);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, &asset).unwrap();
        let h = csapfs::asset::read_header(&File::open(&path).unwrap()).unwrap();
        let a = Asset::open(File::open(&path).unwrap(), &key_of(&h.asset_id)).unwrap();
        for (start, len) in [
            (0usize, 1 << 20),
            (1, (1 << 20) - 1),
            (CHUNK as usize * 3 - 7, 700_001),
            (plain.len() - 400_000, 1 << 20), // runs past the end: short
        ] {
            let mut buf = vec![0u8; len];
            let got = a.read_at(start as u64, &mut buf).unwrap();
            let expected = &plain[start..plain.len().min(start + len)];
            assert_eq!(got, expected.len(), "{suite:?} at {start}");
            assert!(buf[..got] == *expected, "{suite:?} at {start}");
        }
        for tampered in [10usize, 200] {
            let mut bad = asset.clone();
            bad[H + tampered * STORED + 50] ^= 1;
            std::fs::write(&path, &bad).unwrap();
            let a = Asset::open(File::open(&path).unwrap(), &key_of(&h.asset_id)).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let err = a.read_at(0, &mut buf).unwrap_err();
            assert!(
                matches!(err, AssetError::Authentication { chunk_index } if chunk_index == tampered as u64),
                "{suite:?}, chunk {tampered}: {err}"
            );
            assert!(
                buf.iter().all(|&b| b == 0),
                "a failed read leaves no plaintext"
            );
        }
    }
}

#[test]
fn torn_append_recovers_the_last_consistent_size() {
    // A crash during an append leaves new bytes after the old final chunk, which still
    // authenticates as final: the recovering open keeps everything up to it; strict readers
    // refuse the file.
    for torn_bytes in [20usize, 1000, STORED + 5] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let h = header(Suite::Gcm, CHUNK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut asset = Asset::create(file, h, &key_of(&h.asset_id)).unwrap();
        let plain = pattern(2 * CHUNK as usize);
        asset.write_at(0, &plain).unwrap();
        asset.sync().unwrap();
        drop(asset);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&vec![0x55; torn_bytes]).unwrap();
        drop(f);
        assert!(
            decrypt_random_access(&std::fs::read(&path).unwrap()).is_err(),
            "strict read of a torn tail"
        );
        let reopen = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let mut asset = Asset::open_recovering(reopen(), &key_of(&h.asset_id)).unwrap();
        assert_eq!(
            asset.plain_size(),
            plain.len() as u64,
            "{torn_bytes} torn bytes"
        );
        let mut buf = vec![0u8; plain.len()];
        assert_eq!(asset.read_at(0, &mut buf).unwrap(), plain.len());
        assert_eq!(buf, plain);
        // The next mutation cuts the torn bytes.
        asset.write_at(plain.len() as u64, b"more").unwrap();
        drop(asset);
        let mut expected = plain.clone();
        expected.extend_from_slice(b"more");
        assert_eq!(decrypt(&std::fs::read(&path).unwrap()).unwrap(), expected);
    }
}

#[test]
fn recovering_open_does_not_excuse_truncation() {
    let plain = pattern(3 * CHUNK as usize);
    let asset = encrypt(Suite::Gcm, &plain);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    for cut in [H + 2 * STORED, H + 2 * STORED + 10, H + STORED + 100] {
        std::fs::write(&path, &asset[..cut]).unwrap();
        let h = csapfs::asset::read_header(&File::open(&path).unwrap()).unwrap();
        match Asset::open_recovering(File::open(&path).unwrap(), &key_of(&h.asset_id)) {
            Err(_) => {}
            Ok(a) => {
                let mut buf = vec![0u8; a.plain_size() as usize];
                assert!(
                    a.read_at(0, &mut buf).is_err(),
                    "cut at {cut} read back without error"
                );
            }
        }
    }
}

#[test]
fn sparse_holes_read_as_zeros_but_only_in_sparse_assets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let h = header(Suite::Gcm, CHUNK);
    let mut asset = create_asset(&path, h);
    let far = 100 * CHUNK as u64 + 7;
    asset.write_at(far, b"tail").unwrap();
    assert!(asset.header().is_sparse());
    assert_eq!(asset.plain_size(), far + 4);
    let mut buf = vec![1u8; 3 * CHUNK as usize];
    asset.read_at(50 * CHUNK as u64, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let stored = std::fs::read(&path).unwrap();
    let mut expected = vec![0u8; far as usize];
    expected.extend_from_slice(b"tail");
    assert_eq!(decrypt(&stored).unwrap(), expected);

    // In a non-sparse asset an all-zero chunk is tampering, not a hole.
    let mut dense = encrypt(Suite::Gcm, &pattern(3 * CHUNK as usize));
    dense[H + STORED..H + 2 * STORED].fill(0);
    assert_rejected(&dense, "zeroed chunk in a dense asset");
}

/// A plaintext model of the operations the filesystem performs on an asset.
#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize },
    SetLen(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let edge = prop_oneof![
        Just(0u64),
        Just(CHUNK as u64 - 1),
        Just(CHUNK as u64),
        Just(CHUNK as u64 + 1),
        0u64..(12 * CHUNK as u64),
        (60 * CHUNK as u64)..(64 * CHUNK as u64),
    ];
    prop_oneof![
        4 => (edge.clone(), 0usize..(3 * CHUNK as usize)).prop_map(|(offset, len)| Op::Write { offset, len }),
        2 => edge.prop_map(Op::SetLen),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn stream_round_trip_for_edge_sizes(
        len in prop_oneof![Just(0usize), Just(1), Just(CHUNK as usize - 1), Just(CHUNK as usize),
                           Just(CHUNK as usize + 1), 0usize..(20 * CHUNK as usize)],
        suite in prop_oneof![Just(Suite::Gcm), Just(Suite::CtrBlake3)],
    ) {
        let plain = pattern(len);
        let asset = encrypt(suite, &plain);
        prop_assert_eq!(asset.len() as u64, header(suite, CHUNK).layout().stored_len(len as u64));
        prop_assert_eq!(decrypt(&asset).unwrap(), plain);
    }

    #[test]
    fn random_ranges_read_what_was_written(len in 0usize..(10 * CHUNK as usize), start in 0usize..(11 * CHUNK as usize), n in 0usize..(3 * CHUNK as usize)) {
        let plain = pattern(len);
        let asset = encrypt(Suite::CtrBlake3, &plain);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, &asset).unwrap();
        let h = csapfs::asset::read_header(&File::open(&path).unwrap()).unwrap();
        let a = Asset::open(File::open(&path).unwrap(), &key_of(&h.asset_id)).unwrap();
        let mut buf = vec![0u8; n];
        let got = a.read_at(start as u64, &mut buf).unwrap();
        let expected = plain.get(start..).map(|s| &s[..s.len().min(n)]).unwrap_or(&[]);
        prop_assert_eq!(&buf[..got], expected);
    }

    #[test]
    fn asset_operations_match_a_plaintext_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let h = header(Suite::Gcm, CHUNK);
        let key = key_of(&h.asset_id);
        let open = || OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let mut asset = Asset::create(file, h, &key).unwrap();
        let mut model: Vec<u8> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            match *op {
                Op::Write { offset, len } => {
                    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(step as u8) | 1).collect();
                    asset.write_at(offset, &data).unwrap();
                    if !data.is_empty() {
                        let end = offset as usize + len;
                        if model.len() < end { model.resize(end, 0); }
                        model[offset as usize..end].copy_from_slice(&data);
                    }
                }
                Op::SetLen(size) => { asset.set_len(size).unwrap(); model.resize(size as usize, 0); }
                Op::Reopen => { drop(asset); asset = Asset::open(open(), &key).unwrap(); }
            }
            prop_assert_eq!(asset.plain_size(), model.len() as u64, "step {} {:?}", step, op);
        }
        let mut buf = vec![0u8; model.len() + 10];
        let n = asset.read_at(0, &mut buf).unwrap();
        prop_assert_eq!(&buf[..n], model.as_slice());
        drop(asset);
        prop_assert_eq!(decrypt(&std::fs::read(&path).unwrap()).unwrap(), model);
    }
}

#[test]
fn interrupted_extension_rolls_back_to_the_size_before_it() {
    // The crash window between putting down a new tail and re-sealing the old final chunk as
    // non-final (FORMAT.md §6): the header's appending mark lets recovery return to the old size.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let h = header(Suite::Gcm, CHUNK);
    let key = key_of(&h.asset_id);
    let rw = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut asset = Asset::create(file, h, &key).unwrap();
    let before = pattern(2 * CHUNK as usize + 100);
    asset.write_at(0, &before).unwrap();
    asset.sync().unwrap();
    let a = std::fs::read(&path).unwrap();
    asset
        .write_at(before.len() as u64, &vec![0xEE; 3 * CHUNK as usize])
        .unwrap();
    drop(asset);
    let b = std::fs::read(&path).unwrap();
    let old_final_at = H + 2 * STORED;

    // Tail written, old (partial) final chunk not yet re-sealed.
    let mut window = b.clone();
    window[old_final_at..old_final_at + 100 + CHUNK_OVERHEAD as usize]
        .copy_from_slice(&a[old_final_at..]);
    // Only the header's mark written.
    let mut header_only = a.clone();
    header_only[..H].copy_from_slice(&b[..H]);
    for (state, bytes) in [("tail written", window), ("mark written", header_only)] {
        std::fs::write(&path, &bytes).unwrap();
        let mut asset = Asset::open_recovering(rw(), &key).unwrap();
        assert_eq!(asset.plain_size(), before.len() as u64, "{state}");
        let mut buf = vec![0u8; before.len()];
        asset.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, before, "{state}");
        asset.write_at(buf.len() as u64, b"!").unwrap();
        asset.sync().unwrap();
        drop(asset);
        let mut expected = before.clone();
        expected.push(b'!');
        assert_eq!(
            decrypt(&std::fs::read(&path).unwrap()).unwrap(),
            expected,
            "{state}"
        );
    }

    // The finished extension is kept.
    std::fs::write(&path, &b).unwrap();
    let asset = Asset::open_recovering(rw(), &key).unwrap();
    assert_eq!(asset.plain_size(), before.len() as u64 + 3 * CHUNK as u64);
}
