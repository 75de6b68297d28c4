//! chardev crate (work in progress).
