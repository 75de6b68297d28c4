//! The VMM behind the `vmm` binary (`main.rs` is its command line and main loop): the KVM,
//! vhost-user and no-guest machines, the virtio-serial port wiring, the guest memory a
//! vhost-user frontend shares. A library so that fuzz targets and tests can drive its parts
//! directly.

pub mod cli;
pub mod kvm;
pub mod machine;
pub mod ports;
pub mod shared_memory;
pub mod signals;
pub mod vhost_user;
