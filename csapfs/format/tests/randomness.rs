//! Attack test: the operating system's random number generator failing. A seccomp filter makes
//! getrandom(2) answer `EIO` on one thread (the getrandom crate then reports an error, it does
//! not fall back to a file); every seal and every new id there must be an error the mount can
//! answer with `EIO` — not a panic of the thread that serves the write, and no chunk written.

use std::fs::OpenOptions;

use csap_format::asset::{Asset, AssetError};
use csap_format::format::{AssetId, Header, KeyId, ScopeId, Suite, DEFAULT_CHUNK_SIZE};
use csap_format::stream::encrypt_stream;
use csap_format::ContentKey;

#[path = "support/no_randomness.rs"]
mod no_randomness;
use no_randomness::{deny_randomness_on_this_thread, EIO};

/// Runs `f` on a fresh thread that has no OS randomness.
fn without_randomness<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            deny_randomness_on_this_thread();
            f()
        })
        .join()
        .expect("a failing RNG must be an error, not a panic")
    })
}

fn header() -> Header {
    Header::new(
        Suite::Gcm,
        DEFAULT_CHUNK_SIZE,
        AssetId([7; 16]),
        KeyId {
            scope: ScopeId([1; 16]),
            version: 1,
        },
    )
    .unwrap()
}

fn is_randomness_error(err: &AssetError) -> bool {
    err.errno() == EIO && err.to_string().contains("random number generator")
}

#[test]
fn a_write_without_randomness_fails_with_eio_and_leaves_the_chunk_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let key = ContentKey::from_bytes([3; 32]);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let mut asset = Asset::create(file, header(), &key).unwrap();
    asset.write_at(0, b"frame one").unwrap();
    let stored_before = std::fs::read(&path).unwrap();

    let (overwrite, extend) =
        without_randomness(|| (asset.write_at(0, b"FRAME"), asset.write_at(9, b" and two")));
    for result in [overwrite, extend] {
        let err = result.expect_err("sealed without a fresh nonce");
        assert!(is_randomness_error(&err), "{err}");
    }
    // The overwrite sealed nothing: the stored chunk is the one sealed before.
    drop(asset);
    let reopened =
        Asset::open_recovering(OpenOptions::new().read(true).open(&path).unwrap(), &key).unwrap();
    let mut buf = [0u8; 64];
    let n = reopened.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"frame one");
    let stored_after = std::fs::read(&path).unwrap();
    assert_eq!(
        stored_after[96..],
        stored_before[96..],
        "no chunk was rewritten"
    );
}

#[test]
fn creating_or_streaming_without_randomness_fails_with_eio() {
    let dir = tempfile::tempdir().unwrap();
    let key = ContentKey::from_bytes([3; 32]);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("new"))
        .unwrap();
    let (created, streamed) = without_randomness(|| {
        (
            Asset::create(file, header(), &key).map(|_| ()),
            encrypt_stream(&b"plaintext"[..], Vec::new(), &header(), &key).map(|_| ()),
        )
    });
    for result in [created, streamed] {
        let err = result.expect_err("sealed without a fresh nonce");
        assert!(is_randomness_error(&err), "{err}");
    }
    let id = without_randomness(AssetId::random);
    assert!(id.is_err(), "an asset id without randomness: {id:?}");
}
