//! Input checks shared by the routes: names, digests, asset paths and ids, each failure a 400
//! naming the field.

use crate::error::ApiError;
use crate::keys::random_bytes;
use crate::license::parse_id16;

pub(crate) fn check_name(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            "must be 1-128 characters of A-Z a-z 0-9 . _ - @ (not starting with '.')",
        ))
    }
}

pub(crate) fn check_digest(field: &str, s: &str) -> Result<(), ApiError> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            "must be a BLAKE3 digest: 64 lowercase hex characters",
        ))
    }
}

/// Asset paths are relative, "/"-separated, without empty, "." or ".." segments.
pub(crate) fn check_path(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 4096
        && !s.contains('\0')
        && s.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            "must be a relative path without empty, '.' or '..' segments",
        ))
    }
}

pub(crate) fn check_asset_id(field: &str, s: &str) -> Result<[u8; 16], ApiError> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::bad(
            field,
            "asset ids are 32 lowercase hex characters",
        ));
    }
    parse_id16(s).ok_or_else(|| ApiError::bad(field, "asset ids are 32 lowercase hex characters"))
}

pub(crate) fn new_id() -> Result<[u8; 16], ApiError> {
    let mut id = [0u8; 16];
    random_bytes(&mut id).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(id)
}
