//! Asset and scope ids: 128 random bits each, written as 32 hex characters in headers' texts,
//! on the wire and in the key server's registry.

use std::fmt;

use serde::Serialize;

/// A text that is not 32 hex characters (16 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a 128-bit id (32 hex characters)")]
pub struct BadId(pub String);

/// The 16 bytes that `text` spells in hex, if it is exactly 32 hex characters.
pub fn parse_hex16(text: &str) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(text, &mut id).ok()?;
    Some(id)
}

/// The operating system's random number generator failed: an error for the caller to answer
/// (`EIO` on the mount's write path), never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomnessUnavailable(pub getrandom::Error);

/// 16 bytes from the operating system's RNG (asset ids, scope ids).
pub fn random_id() -> Result<[u8; 16], RandomnessUnavailable> {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).map_err(RandomnessUnavailable)?;
    Ok(id)
}

macro_rules! hex_id {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub fn random() -> Result<Self, RandomnessUnavailable> {
                Ok($name(random_id()?))
            }

            pub fn from_hex(text: &str) -> Result<Self, BadId> {
                parse_hex16(text)
                    .map($name)
                    .ok_or_else(|| BadId(text.to_string()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
    };
}

hex_id!(
    AssetId,
    "The 128-bit random identity of one asset; it names the asset's content key."
);
hex_id!(
    ScopeId,
    "The 128-bit identity of a key scope (a key server scope, or a key file's fingerprint)."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_exactly_32_hex_characters() {
        let id = AssetId([0xa5; 16]);
        assert_eq!(AssetId::from_hex(&id.to_string()), Ok(id));
        assert_eq!(parse_hex16(&"A5".repeat(16)), Some([0xa5; 16]));
        for bad in ["", "a5", &"a5".repeat(17), &"zz".repeat(16)] {
            assert_eq!(parse_hex16(bad), None, "{bad}");
            assert_eq!(ScopeId::from_hex(bad), Err(BadId(bad.to_string())));
        }
        assert_ne!(AssetId::random().unwrap(), AssetId::random().unwrap());
    }
}
