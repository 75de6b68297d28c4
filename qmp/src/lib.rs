//! QMP: the wire protocol, the monitor server, the guest-agent proxy and a small client.
//!
//! - [`protocol`]: requests, replies, errors, events, greeting, argument checking, ASCII encoding.
//! - [`server`]: the [`server::Monitor`] event-loop subscriber serving many sessions.
//! - [`proxy`]: [`proxy::QmpProxy`], forwarding `guest-*` commands to one agent channel.
//! - [`hmp`]: `human-monitor-command`, QEMU's human monitor for the machine's commands.
//! - [`hub`]: how the proxy and the machine hand replies/events to sessions.
//! - [`client`]: a blocking client for tests, benchmarks and tools.
//!
//! Input is parsed by [`qjson::Streamer`], the QEMU json-lexer/json-streamer/json-parser
//! implementation shared with the guest agent.

pub mod client;
pub mod hmp;
pub mod hub;
pub mod protocol;
pub mod proxy;
pub mod server;

pub use hub::{MonitorHandle, SessionId};
pub use protocol::{ErrorClass, QmpError};
pub use proxy::{AgentChannel, QmpProxy};
pub use server::{CommandSpec, Machine, Monitor, SocketAddr};
