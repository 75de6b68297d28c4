//! The `qmp_proxy` chardev: joins a [`QmpProxy`] to its agent.
//!
//! With `path=`, the agent is a host-side process listening on a unix socket (qemu-ga or
//! virtagent in `unix-listen` mode, for testing without a VM): the proxy connects as a client,
//! and reconnects whenever the agent restarts. (Without `path=`, the chardev is the backend of a
//! virtio-serial port; that wiring lives with the device.)

use qmp::QmpProxy;
use std::cell::RefCell;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use crate::{
    Backend, Chardev, ChardevError, ChardevEvent, ChardevSpec, Frontend, SocketAddr, SocketSpec,
};

/// Delivers the socket's bytes and connection changes to the proxy.
struct ProxyFrontend(Rc<RefCell<QmpProxy>>);

impl Frontend for ProxyFrontend {
    fn receive(&mut self, data: &[u8]) {
        self.0.borrow_mut().on_bytes(data);
    }

    fn event(&mut self, ev: ChardevEvent) {
        match ev {
            ChardevEvent::Opened => self.0.borrow_mut().on_open(),
            ChardevEvent::Closed => self.0.borrow_mut().on_close(),
        }
    }
}

/// The proxy's byte path to the agent: the socket chardev.
struct SocketChannel(Chardev);

impl qmp::AgentChannel for SocketChannel {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let n = self.0.write(data)?;
        if n < data.len() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "agent channel buffer full",
            ));
        }
        Ok(())
    }
}

/// Connects `proxy` to the agent listening on `path`, retrying every `reconnect`.
pub fn attach_socket(
    id: &str,
    proxy: Rc<RefCell<QmpProxy>>,
    path: &Path,
    reconnect: Duration,
) -> Result<Chardev, ChardevError> {
    let spec = ChardevSpec {
        id: id.to_string(),
        backend: Backend::Socket(SocketSpec {
            addr: SocketAddr::Unix(path.to_path_buf()),
            server: false,
            wait: false,
            reconnect: Some(reconnect.max(Duration::from_millis(10))),
        }),
    };
    let cd = Chardev::new(&spec)?;
    cd.set_filename_prefix("qmp_proxy:");
    cd.set_output_limit(qmp::proxy::MAX_AGENT_BACKLOG);
    proxy
        .borrow_mut()
        .set_channel(Box::new(SocketChannel(cd.clone())));
    cd.set_frontend(Rc::new(RefCell::new(ProxyFrontend(proxy))));
    Ok(cd)
}

/// Port mode: the proxy's agent is behind a virtio-serial port (a `qmp_proxy` chardev without
/// `path=` named by a `virtserialport`). `channel` is the port's byte path (from the VMM's port
/// wiring); the guest's PORT_OPEN/close drive the proxy's `on_open`/`on_close` there. The
/// returned chardev has no fds of its own (`query-chardev` shows `qmp_proxy:null`).
pub fn attach_port(
    id: &str,
    proxy: Rc<RefCell<QmpProxy>>,
    channel: Box<dyn qmp::AgentChannel>,
) -> Result<Chardev, ChardevError> {
    let cd = Chardev::new(&ChardevSpec {
        id: id.to_string(),
        backend: Backend::Null,
    })?;
    cd.set_filename_prefix("qmp_proxy:");
    proxy.borrow_mut().set_channel(channel);
    Ok(cd)
}
