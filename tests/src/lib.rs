//! Shared harness for the cross-crate end-to-end tests.
