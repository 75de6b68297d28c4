//! QMP: the wire protocol, the monitor server, the guest-agent proxy and a small client.
//!
//! - [`parser`]: QEMU-compatible streaming JSON splitter (bounded, survives any byte sequence).
//! - [`protocol`]: requests, replies, errors, events, greeting, argument checking, ASCII encoding.
//! - [`server`]: the [`server::Monitor`] event-loop subscriber serving many sessions.
//! - [`proxy`]: [`proxy::QmpProxy`], forwarding `guest-*` commands to one agent channel.
//! - [`hmp`]: `human-monitor-command`, QEMU's human monitor for the machine's commands.
//! - [`hub`]: how the proxy and the machine hand replies/events to sessions.
//! - [`client`]: a blocking client for tests, benchmarks and tools.

pub mod client;
pub mod hmp;
pub mod hub;
pub mod parser;
pub mod protocol;
pub mod proxy;
pub mod server;

pub use hub::{MonitorHandle, SessionId};
pub use protocol::{ErrorClass, QmpError};
pub use proxy::{AgentChannel, QmpProxy};
pub use server::{CommandSpec, Machine, Monitor, SocketAddr};
