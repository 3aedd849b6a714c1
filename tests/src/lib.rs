//! Cross-crate tests live in `tests/tests/`; the end-to-end tests that need the `csap` binary
//! (real processes, real mounts, real TLS) live in `cli/tests/`, where cargo builds it for them,
//! on the shared fixture in `tests/support/` (crate `csap-testkit`).
