//! agent crate (work in progress).
