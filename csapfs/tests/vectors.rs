//! Fixed test vectors (FORMAT.md §Test vectors): `csapfs/testdata/vectors.json` is checked in;
//! these tests rebuild every vector from its inputs and decrypt every checked-in asset, so the
//! spec, the file and the code cannot drift apart. Regenerate (only on a deliberate format
//! change) with `CSAP_REGENERATE_VECTORS=1 cargo test -p csapfs --test vectors`.

use csapfs::crypto::AssetKeys;
// The fixed-nonce entry exists only with csap-format's `test-vectors` feature (dev-dependency).
use csap_format::format::seal_chunk_with_nonce;
use csapfs::format::{AssetId, Header, KeyId, ScopeId, Suite, CHUNK_OVERHEAD};
use csapfs::stream::decrypt_stream;
use csapfs::{derive_content_key, AssetError, Seed};
use serde_json::{json, Value};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json");

struct Inputs {
    name: &'static str,
    suite: Suite,
    chunk_size: u32,
    plaintext_len: usize,
    /// Write generation in the header (FORMAT.md §7); 0 = no generation flag.
    generation: u32,
}

const VECTORS: [Inputs; 5] = [
    Inputs {
        name: "gcm_empty",
        suite: Suite::Gcm,
        chunk_size: 4096,
        plaintext_len: 0,
        generation: 0,
    },
    Inputs {
        name: "gcm_three_chunks",
        suite: Suite::Gcm,
        chunk_size: 4096,
        plaintext_len: 10_000,
        generation: 0,
    },
    Inputs {
        name: "ctr_three_chunks",
        suite: Suite::CtrBlake3,
        chunk_size: 4096,
        plaintext_len: 10_000,
        generation: 0,
    },
    Inputs {
        name: "gcm_exact_chunk",
        suite: Suite::Gcm,
        chunk_size: 4096,
        plaintext_len: 4096,
        generation: 0,
    },
    Inputs {
        name: "gcm_generation_7",
        suite: Suite::Gcm,
        chunk_size: 4096,
        plaintext_len: 10_000,
        generation: 7,
    },
];

fn seed() -> Seed {
    Seed::from_bytes(std::array::from_fn(|i| i as u8)) // 00 01 … 1f
}

fn asset_id() -> AssetId {
    AssetId(std::array::from_fn(|i| 0xa0 + i as u8)) // a0 a1 … af
}

fn key_id() -> KeyId {
    KeyId {
        scope: ScopeId([0x5c; 16]),
        version: 3,
    }
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Vectors use nonce = chunk index as 12 bytes little-endian; real writers use random nonces.
fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n
}

fn build(v: &Inputs) -> Vec<u8> {
    let key = derive_content_key(&seed(), &asset_id());
    let header = Header::new(v.suite, v.chunk_size, asset_id(), key_id())
        .unwrap()
        .with_generation(v.generation);
    let keys = AssetKeys::new(v.suite, &key);
    let plain = plaintext(v.plaintext_len);
    let mut out = header.encode(&keys).to_vec();
    let pieces: Vec<&[u8]> = if plain.is_empty() {
        vec![&[]]
    } else {
        plain.chunks(v.chunk_size as usize).collect()
    };
    for (i, piece) in pieces.iter().enumerate() {
        let mut sealed = vec![0u8; piece.len() + CHUNK_OVERHEAD as usize];
        let is_final = i + 1 == pieces.len();
        seal_chunk_with_nonce(
            &keys,
            &asset_id(),
            i as u64,
            is_final,
            &nonce(i as u64),
            piece,
            &mut sealed,
        );
        out.extend_from_slice(&sealed);
    }
    out
}

fn decrypt(bytes: &[u8]) -> Result<Vec<u8>, AssetError> {
    let mut out = Vec::new();
    decrypt_stream(bytes, &mut out, |h| {
        Ok(derive_content_key(&seed(), &h.asset_id))
    })?;
    Ok(out)
}

fn generate() -> Value {
    let key = derive_content_key(&seed(), &asset_id());
    let mut vectors = Vec::new();
    for v in &VECTORS {
        vectors.push(json!({
            "name": v.name,
            "suite": v.suite.to_string(),
            "chunk_size": v.chunk_size,
            "plaintext": hex::encode(plaintext(v.plaintext_len)),
            "asset": hex::encode(build(v)),
        }));
    }
    let three = build(&VECTORS[1]);
    let stored = 4096 + CHUNK_OVERHEAD as usize;
    let header = 96;
    let mut swapped = three.clone();
    swapped[header..header + 2 * stored].rotate_left(stored);
    let mut flipped_tag = three.clone();
    let last = flipped_tag.len() - 1;
    flipped_tag[last] ^= 0x01;
    // The generation of a header is authenticated: neither it nor its flag can be edited.
    let seventh = build(&VECTORS[4]);
    let mut generation_lowered = seventh.clone();
    generation_lowered[60] = 6;
    let mut flag_cleared = seventh.clone();
    flag_cleared[11] &= !csapfs::format::FLAG_GENERATION;
    flag_cleared[60..64].fill(0);
    let mut flag_without_generation = seventh.clone();
    flag_without_generation[60..64].fill(0);
    let fail = json!([
        { "name": "fail_truncated_at_chunk_boundary", "expect": "authentication", "asset": hex::encode(&three[..header + 2 * stored]) },
        { "name": "fail_truncated_mid_chunk", "expect": "invalid_length", "asset": hex::encode(&three[..header + stored + 10]) },
        { "name": "fail_chunks_swapped", "expect": "authentication", "asset": hex::encode(&swapped) },
        { "name": "fail_flipped_tag_bit", "expect": "authentication", "asset": hex::encode(&flipped_tag) },
        { "name": "fail_appended_byte", "expect": "authentication", "asset": hex::encode([three.as_slice(), &[0u8]].concat()) },
        { "name": "fail_generation_lowered", "expect": "header_authentication", "asset": hex::encode(&generation_lowered) },
        { "name": "fail_generation_flag_cleared", "expect": "header_authentication", "asset": hex::encode(&flag_cleared) },
        { "name": "fail_generation_flag_with_zero", "expect": "zero_generation", "asset": hex::encode(&flag_without_generation) },
    ]);
    json!({
        "comment": "csap asset format v1 test vectors (gcm_generation_7: header with the generation flag); see csapfs/FORMAT.md",
        "seed": hex::encode(seed().as_bytes()),
        "asset_id": asset_id().to_string(),
        "key_id": { "scope": key_id().scope.to_string(), "version": key_id().version },
        "content_key": hex::encode(key.as_bytes()),
        "nonce_rule": "chunk index as 12 bytes little-endian (vectors only)",
        "vectors": vectors,
        "fail": fail,
    })
}

fn checked_in() -> Value {
    serde_json::from_str(&std::fs::read_to_string(PATH).expect("testdata/vectors.json exists"))
        .unwrap()
}

#[test]
fn checked_in_vectors_match_the_code() {
    let fresh = generate();
    if std::env::var_os("CSAP_REGENERATE_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&fresh).unwrap() + "\n").unwrap();
    }
    assert_eq!(
        checked_in(),
        fresh,
        "vectors.json differs from what the code produces"
    );
}

#[test]
fn checked_in_assets_decrypt_to_their_plaintext() {
    let file = checked_in();
    for v in file["vectors"].as_array().unwrap() {
        let asset = hex::decode(v["asset"].as_str().unwrap()).unwrap();
        let expected = hex::decode(v["plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(decrypt(&asset).unwrap(), expected, "{}", v["name"]);
    }
}

#[test]
fn negative_vectors_are_rejected_with_the_named_error() {
    for v in checked_in()["fail"].as_array().unwrap() {
        let asset = hex::decode(v["asset"].as_str().unwrap()).unwrap();
        let err = decrypt(&asset).expect_err(v["name"].as_str().unwrap());
        let kind = match err {
            AssetError::Authentication { .. } => "authentication",
            AssetError::Format(csapfs::format::FormatError::InvalidLength(_)) => "invalid_length",
            AssetError::Format(csapfs::format::FormatError::HeaderAuthentication) => {
                "header_authentication"
            }
            AssetError::Format(csapfs::format::FormatError::ZeroGeneration) => "zero_generation",
            other => panic!("{}: unexpected {other}", v["name"]),
        };
        assert_eq!(kind, v["expect"], "{}", v["name"]);
    }
}

#[test]
fn content_key_derivation_matches_the_key_server_vector() {
    // Same inputs as keyserver::keys' unit test: HKDF-SHA256(seed 00..1f, "csap/v1/asset" ‖ a0..af).
    let key = derive_content_key(&seed(), &asset_id());
    assert_eq!(
        hex::encode(key.as_bytes()),
        checked_in()["content_key"].as_str().unwrap()
    );
}
