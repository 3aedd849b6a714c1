//! Private (0600) files and directories for secrets: the names the key server's code uses for
//! `csap-base`'s one secret-file writer (atomic, fsynced with its directory, 0600 from creation).

pub use csap_base::files::{create_private_dir, write_public, write_secret as write_private};
