//! virtagent: a qemu-ga compatible guest agent.
//!
//! The [`dispatch::Agent`] owns the streaming JSON parser, validates requests
//! and runs commands (on a worker thread with a timeout); [`transport`]
//! moves bytes between a channel (virtio-serial port, serial tty, unix socket)
//! and the agent.

pub mod args;
pub mod commands;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod logging;
pub mod mounts;
pub mod state;
pub mod transport;
pub mod worker;

pub use dispatch::{Agent, AgentConfig};
pub use error::{ErrorClass, QgaError};
