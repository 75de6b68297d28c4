//! A bus maps address ranges (PIO ports or MMIO addresses) to devices, for vCPU exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a [`Bus`]. Offsets are relative to the start of the device's range.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner (the event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty.
    #[error("empty range at {0:#x}")]
    Empty(u64),
    /// `base + len` overflows.
    #[error("range {base:#x}+{len:#x} overflows")]
    Overflow {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("range {base:#x}+{len:#x} overlaps a device")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// Address ranges → devices. Lookups take `&self`, so one bus serves all vCPU threads; each
/// device has its own lock.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Put `device` at `base..base+len`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        // The nearest range starting below `end` is the only one that can overlap.
        if let Some((&b, &(l, _))) = self.ranges.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// Remove the device whose range starts at `base`.
    pub fn remove(&mut self, base: u64) -> Option<SharedDevice> {
        self.ranges.remove(&base).map(|(_, d)| d)
    }

    /// The device covering `addr..addr+size` and the offset of `addr` in it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= *len).then_some((offset, dev))
    }

    /// Dispatch a read; `false` (and `data` untouched) if no device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; `false` if no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access; reads return the offset.
    struct Probe(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Probe(vec![])));
        let b = Arc::new(Mutex::new(Probe(vec![])));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 5).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(bus.write(0x64, &[0xfe]));
        assert_eq!(b.lock().unwrap().0, vec![(4, vec![0xfe])]);
        assert!(a.lock().unwrap().0.is_empty());
        // Outside every range, or running past the end of one.
        assert!(!bus.read(0x400, &mut d));
        assert!(!bus.write(0x5f, &[1]));
        let mut d2 = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut d2));
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Probe(vec![]))) as SharedDevice;
        bus.insert(d(), 0x1000, 0x200).unwrap();
        assert_eq!(
            bus.insert(d(), 0x11ff, 1),
            Err(BusError::Overlap {
                base: 0x11ff,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(d(), 0xf00, 0x101),
            Err(BusError::Overlap {
                base: 0xf00,
                len: 0x101
            })
        );
        bus.insert(d(), 0xf00, 0x100).unwrap();
        bus.insert(d(), 0x1200, 0x10).unwrap();
        assert_eq!(bus.insert(d(), 5, 0), Err(BusError::Empty(5)));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::Overflow { .. })
        ));
        assert!(bus.remove(0x1000).is_some());
        bus.insert(d(), 0x1100, 0x10).unwrap();
    }
}
