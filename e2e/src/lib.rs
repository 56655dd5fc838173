//! End-to-end tests of the IM system live in `tests/`; this crate has no code of its own.
