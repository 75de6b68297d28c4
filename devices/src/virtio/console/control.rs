//! virtio-console control messages (`struct virtio_console_control`): `le32 id`, `le16 event`,
//! `le16 value`, then event-specific bytes.

/// Size of the control message header.
pub const HEADER_LEN: usize = 8;

/// Port id the Linux driver uses in `DEVICE_READY` (`VIRTIO_CONSOLE_BAD_ID`).
pub const BAD_ID: u32 = u32::MAX;

/// Control events (virtio 1.2, 5.3.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Event {
    /// driver→device: the driver is ready (value 1) or failed (0).
    DeviceReady = 0,
    /// device→driver: a port was added (Linux: `PORT_ADD`).
    DeviceAdd = 1,
    /// device→driver: a port was removed (Linux: `PORT_REMOVE`).
    DeviceRemove = 2,
    /// driver→device: the driver set up the port (value 1) or failed (0).
    PortReady = 3,
    /// device→driver: the port is a console.
    ConsolePort = 4,
    /// device→driver: console size changed; followed by `le16 cols`, `le16 rows`.
    Resize = 5,
    /// both: the port was opened (1) or closed (0) on the sender's side.
    PortOpen = 6,
    /// device→driver: the port's name follows the header.
    PortName = 7,
}

impl Event {
    /// The event with this number, if it is one.
    pub fn from_u16(v: u16) -> Option<Event> {
        Some(match v {
            0 => Event::DeviceReady,
            1 => Event::DeviceAdd,
            2 => Event::DeviceRemove,
            3 => Event::PortReady,
            4 => Event::ConsolePort,
            5 => Event::Resize,
            6 => Event::PortOpen,
            7 => Event::PortName,
            _ => return None,
        })
    }
}

/// A decoded control message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlHeader {
    /// Port number.
    pub id: u32,
    /// Event number (see [`Event`]).
    pub event: u16,
    /// Event value.
    pub value: u16,
}

impl ControlHeader {
    /// Decode a header; `None` if `bytes` is shorter than [`HEADER_LEN`].
    pub fn parse(bytes: &[u8]) -> Option<ControlHeader> {
        let b: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(ControlHeader {
            id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            event: u16::from_le_bytes([b[4], b[5]]),
            value: u16::from_le_bytes([b[6], b[7]]),
        })
    }
}

/// Encode a device→driver message: header then `payload`.
pub fn encode(id: u32, event: Event, value: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&(event as u16).to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_header() {
        let m = encode(7, Event::PortName, 1, b"org.qemu.guest_agent.0");
        assert_eq!(&m[..8], &[7, 0, 0, 0, 7, 0, 1, 0]);
        assert_eq!(&m[8..], b"org.qemu.guest_agent.0");
        let h = ControlHeader::parse(&m).unwrap();
        assert_eq!(
            h,
            ControlHeader {
                id: 7,
                event: 7,
                value: 1
            }
        );
    }

    #[test]
    fn short_header_is_refused() {
        assert_eq!(ControlHeader::parse(&[0; 7]), None);
        assert_eq!(ControlHeader::parse(&[]), None);
    }

    #[test]
    fn unknown_event_is_none() {
        assert_eq!(Event::from_u16(8), None);
        assert_eq!(Event::from_u16(0xffff), None);
        for v in 0..8 {
            assert_eq!(Event::from_u16(v).map(|e| e as u16), Some(v));
        }
    }
}
