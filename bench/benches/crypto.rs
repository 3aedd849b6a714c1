//! Chunk cipher throughput, single thread: both csap suites (through the real
//! `csapfs::format::{seal_chunk, open_chunk}` path) and, as the baseline that motivated the
//! choice of `ring`, RustCrypto's `aes-gcm` on the same chunk sizes.
//!
//! `cargo bench -p bench --bench crypto`

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::KeyInit;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use csapfs::crypto::AssetKeys;
use csapfs::format::{open_chunk, seal_chunk, AssetId, Suite, CHUNK_OVERHEAD};
use csapfs::ContentKey;

const SIZES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

fn suites(c: &mut Criterion) {
    let key = ContentKey::from_bytes([7; 32]);
    let id = AssetId([1; 16]);
    for (suite, name) in [(Suite::Gcm, "gcm"), (Suite::CtrBlake3, "ctr+blake3")] {
        let keys = AssetKeys::new(suite, &key);
        let mut group = c.benchmark_group(name);
        for (size, label) in SIZES {
            group.throughput(Throughput::Bytes(size as u64));
            let plain = vec![0x5a; size];
            let mut sealed = vec![0u8; size + CHUNK_OVERHEAD as usize];
            group.bench_function(BenchmarkId::new("encrypt", label), |b| {
                b.iter(|| {
                    seal_chunk(&keys, &id, 3, false, black_box(&plain), &mut sealed)
                        .expect("OS randomness")
                })
            });
            seal_chunk(&keys, &id, 3, false, &plain, &mut sealed).expect("OS randomness");
            group.bench_function(BenchmarkId::new("decrypt", label), |b| {
                b.iter_batched_ref(
                    || sealed.clone(),
                    |buf| {
                        open_chunk(&keys, &id, 3, false, buf).expect("authentic");
                    },
                    BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

/// RustCrypto `aes-gcm` (the workspace's originally chosen crate), same sizes.
fn rustcrypto_gcm(c: &mut Criterion) {
    let cipher = aes_gcm::Aes256Gcm::new(&[7u8; 32].into());
    let nonce = aes_gcm::Nonce::from([9u8; 12]);
    let mut group = c.benchmark_group("rustcrypto-aes-gcm");
    for (size, label) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0x5a; size];
        group.bench_function(BenchmarkId::new("encrypt", label), |b| {
            b.iter(|| {
                cipher
                    .encrypt_in_place_detached(&nonce, b"aad", &mut buf)
                    .unwrap()
            })
        });
        let mut sealed = vec![0x5a; size];
        let tag = cipher
            .encrypt_in_place_detached(&nonce, b"aad", &mut sealed)
            .unwrap();
        group.bench_function(BenchmarkId::new("decrypt", label), |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| {
                    cipher
                        .decrypt_in_place_detached(&nonce, b"aad", buf, &tag)
                        .unwrap()
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = suites, rustcrypto_gcm }
criterion_main!(benches);
