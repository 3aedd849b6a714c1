//! Whole-file streaming: encrypt a plaintext stream into an asset, decrypt an asset stream.
//!
//! Used by `csap asset encrypt|decrypt` and by bulk import. Each chunk is sealed or opened as it
//! passes; whether a chunk is final is known by reading one chunk ahead.

use std::io::{self, Read, Write};

use crate::asset::AssetError;
use crate::crypto::{AssetKeys, ContentKey};
use crate::format::{open_chunk, seal_chunk, FormatError, Header, CHUNK_OVERHEAD, HEADER_LEN};

/// Encrypts all of `input` into `output` as an asset with `header`; returns the plaintext size.
pub fn encrypt_stream<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    header: &Header,
    key: &ContentKey,
) -> Result<u64, AssetError> {
    let keys = AssetKeys::new(header.suite, key);
    output.write_all(&header.encode(&keys))?;
    let chunk_size = header.chunk_size as usize;
    let mut current = vec![0u8; chunk_size];
    let mut next = vec![0u8; chunk_size];
    let mut sealed = vec![0u8; chunk_size + CHUNK_OVERHEAD as usize];
    let mut current_len = read_full(&mut input, &mut current)?;
    let mut index = 0u64;
    let mut total = 0u64;
    loop {
        let next_len = if current_len == chunk_size {
            read_full(&mut input, &mut next)?
        } else {
            0
        };
        let is_final = next_len == 0;
        let out = &mut sealed[..current_len + CHUNK_OVERHEAD as usize];
        seal_chunk(
            &keys,
            &header.asset_id,
            index,
            is_final,
            &current[..current_len],
            out,
        )?;
        output.write_all(out)?;
        total += current_len as u64;
        if is_final {
            break;
        }
        std::mem::swap(&mut current, &mut next);
        current_len = next_len;
        index += 1;
    }
    output.flush()?;
    Ok(total)
}

/// Decrypts the asset in `input` into `output`. `key_for` gets the strictly decoded but not yet
/// authenticated header and returns its key. Plaintext is written chunk by chunk, each only
/// after it authenticated; on any error the caller must discard what was written (the CLI
/// writes to a temporary file and renames it only on success).
pub fn decrypt_stream<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    key_for: impl FnOnce(&Header) -> Result<ContentKey, AssetError>,
) -> Result<Header, AssetError> {
    let mut header_bytes = [0u8; HEADER_LEN as usize];
    let n = read_full(&mut input, &mut header_bytes)?;
    let header = Header::decode_unauthenticated(&header_bytes[..n])?;
    let key = key_for(&header)?;
    let keys = AssetKeys::new(header.suite, &key);
    Header::verify(&header_bytes, &keys)?;
    let stored_chunk = header.chunk_size as usize + CHUNK_OVERHEAD as usize;
    let mut current = vec![0u8; stored_chunk];
    let mut next = vec![0u8; stored_chunk];
    let mut current_len = read_full(&mut input, &mut current)?;
    let mut index = 0u64;
    let mut consumed = HEADER_LEN;
    loop {
        let next_len = if current_len == stored_chunk {
            read_full(&mut input, &mut next)?
        } else {
            0
        };
        let is_final = next_len == 0;
        // Only the first chunk of an empty asset may be empty; anything shorter is a cut.
        let min_len = if index == 0 {
            CHUNK_OVERHEAD as usize
        } else {
            CHUNK_OVERHEAD as usize + 1
        };
        if current_len < min_len {
            return Err(FormatError::InvalidLength(consumed + current_len as u64).into());
        }
        let stored = &mut current[..current_len];
        if header.is_sparse() && !is_final && stored.iter().all(|&b| b == 0) {
            // A hole (FORMAT.md "Holes"): a full interior chunk of zeros in a sparse asset.
            output.write_all(&stored[..header.chunk_size as usize])?;
        } else {
            let plain = open_chunk(&keys, &header.asset_id, index, is_final, stored)
                .map_err(|_| AssetError::Authentication { chunk_index: index })?;
            output.write_all(plain)?;
        }
        consumed += current_len as u64;
        if is_final {
            break;
        }
        std::mem::swap(&mut current, &mut next);
        current_len = next_len;
        index += 1;
    }
    output.flush()?;
    Ok(header)
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(done)
}
