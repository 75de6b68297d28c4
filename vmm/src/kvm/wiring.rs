//! The KVM machine's virtio-serial ports joined to their host sides through the transport-
//! independent [`PortHub`](crate::ports::PortHub): the hub gets the MMIO transport as its
//! [`PortDevice`].

use chardev::Chardev;
use devices::virtio::console::PortBackend;
use event_manager::MutEventSubscriber;
use qmp::QmpProxy;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::machine::{PortWiring, Transport};
use crate::ports::{PlannedPort, PortDevice, PortHub, PortSink};

/// Host-side calls into the virtio-serial device behind its MMIO transport.
struct MmioPorts(Arc<Mutex<Transport>>);

impl MmioPorts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Transport> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PortDevice for MmioPorts {
    fn port_write(&self, port: u32, data: &[u8]) -> usize {
        // `None`: the device failed and waits for a driver reset; nothing is taken.
        self.lock()
            .with_device_io(|c, io| c.port_write_io(io, port, data))
            .unwrap_or(0)
    }

    fn port_drained(&self, port: u32) {
        self.lock().with_device(|c| c.port_drained(port));
    }

    fn set_host_connected(&self, port: u32, connected: bool) {
        if let Err(e) = self
            .lock()
            .with_device(|c| c.set_host_connected(port, connected))
        {
            log::warn!("port {port}: {e}");
        }
    }
}

/// [`PortWiring`] through a [`PortHub`].
pub struct HubWiring {
    hub: Option<PortHub>,
    chardevs: Vec<Chardev>,
    proxies: Vec<(String, Rc<RefCell<QmpProxy>>)>,
}

impl HubWiring {
    /// `proxies`: the `qmp_proxy` chardevs (by id) whose channel the hub already provides.
    pub fn new(
        hub: PortHub,
        chardevs: &[Chardev],
        proxies: &[(String, Rc<RefCell<QmpProxy>>)],
    ) -> Self {
        HubWiring {
            hub: Some(hub),
            chardevs: chardevs.to_vec(),
            proxies: proxies.to_vec(),
        }
    }
}

impl PortWiring for HubWiring {
    fn backend(&mut self, p: &PlannedPort) -> Result<(Box<dyn PortBackend>, bool), String> {
        let sink = match self.proxies.iter().find(|(id, _)| *id == p.chardev) {
            Some((_, px)) => PortSink::Proxy(px.clone()),
            None => PortSink::Chardev(
                self.chardevs
                    .iter()
                    .find(|c| c.id() == p.chardev)
                    .cloned()
                    .ok_or_else(|| format!("-device: chardev '{}' does not exist", p.chardev))?,
            ),
        };
        let connected = sink.connected();
        let hub = self.hub.as_mut().ok_or("port wiring already started")?;
        let backend = hub
            .add_port(p.port, p.dev_id.clone(), sink)
            .map_err(|e| format!("port {}: {e}", p.port))?;
        Ok((backend, connected))
    }

    fn attach(&mut self, transport: Arc<Mutex<Transport>>) {
        if let Some(hub) = self.hub.as_mut() {
            hub.connect(Rc::new(MmioPorts(transport)));
        }
    }

    fn subscriber(&mut self) -> Option<Box<dyn MutEventSubscriber>> {
        self.hub
            .take()
            .map(|h| Box::new(h) as Box<dyn MutEventSubscriber>)
    }
}
