//! qmp crate (work in progress).
