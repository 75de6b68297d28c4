//! devices crate (work in progress).
