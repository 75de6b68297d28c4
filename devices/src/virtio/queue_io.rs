//! Descriptor-chain helpers: validate a chain once, then copy bytes in or out of it.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::bitmap::MS;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, Permissions, VolatileSlice};

use super::DeviceError;

/// Upper bound on the descriptors of one chain we accept (a ring holds at most 32768
/// descriptors; an indirect table could claim more).
const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// Why a chain was refused. The buffer is returned to the driver with used length 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChainError {
    /// The chain has no descriptor (bad head index or unreadable descriptor table).
    #[error("empty descriptor chain")]
    Empty,
    /// A `next` link pointed outside the table, looped, or could not be read.
    #[error("descriptor chain loops, is cut or links outside the table")]
    Broken,
    /// More descriptors than we accept.
    #[error("descriptor chain longer than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooLong,
    /// A device-readable buffer where a writable one was expected, or the reverse.
    #[error("descriptor with the wrong direction")]
    WrongDirection,
    /// A buffer lies (partly) outside guest memory.
    #[error("descriptor buffer outside guest memory")]
    OutOfMemory,
}

/// A validated descriptor chain: every segment is in guest memory and has the right direction.
#[derive(Debug, Clone)]
pub(crate) struct Buffer {
    /// Head descriptor index, to return through the used ring.
    pub head: u16,
    /// (address, length) of each segment, zero-length ones dropped.
    pub segs: Vec<(GuestAddress, u32)>,
    /// Sum of the segment lengths.
    pub len: u64,
}

/// What [`pop`] found.
pub(crate) enum Popped {
    /// Nothing available.
    None,
    /// A usable buffer.
    Buffer(Buffer),
    /// A chain that must be returned unused (head index, reason).
    Bad(u16, ChainError),
}

/// Take the next available chain of `queue` and validate it for `writable` use. `segs` is
/// recycled storage for the segment list (cleared here).
pub(crate) fn pop<M: GuestMemory>(
    queue: &mut Queue,
    index: u16,
    mem: &M,
    writable: bool,
    mut segs: Vec<(GuestAddress, u32)>,
) -> Result<Popped, DeviceError> {
    let chain = {
        let mut iter = queue.iter(mem).map_err(|source| DeviceError::AvailRing {
            queue: index,
            source,
        })?;
        match iter.next() {
            Some(c) => c,
            None => return Ok(Popped::None),
        }
    };
    let head = chain.head_index();
    segs.clear();
    let mut len = 0u64;
    let mut count = 0usize;
    let mut last_has_next = false;
    let mut error = None;
    for desc in chain {
        count += 1;
        last_has_next = desc.has_next();
        if count > MAX_CHAIN_DESCRIPTORS {
            error = Some(ChainError::TooLong);
            break;
        }
        if desc.is_write_only() != writable {
            error.get_or_insert(ChainError::WrongDirection);
            continue;
        }
        let dlen = desc.len();
        if dlen == 0 {
            continue;
        }
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !in_guest_memory(mem, desc.addr(), dlen as usize, access) {
            error.get_or_insert(ChainError::OutOfMemory);
            continue;
        }
        len += u64::from(dlen);
        segs.push((desc.addr(), dlen));
    }
    if let Some(e) = error {
        return Ok(Popped::Bad(head, e));
    }
    if count == 0 {
        return Ok(Popped::Bad(head, ChainError::Empty));
    }
    if last_has_next {
        return Ok(Popped::Bad(head, ChainError::Broken));
    }
    Ok(Popped::Buffer(Buffer { head, segs, len }))
}

/// The three areas of a ready split queue, each as one slice of a guest memory region, for the
/// data path's common case: a chain of one descriptor with the right direction, returned at
/// once. [`Rings::pop`] takes such a chain and [`Rings::add_used`] returns a buffer with a
/// few bounds-checked loads and stores instead of `virtio-queue`'s walk through guest memory
/// for every field. Anything else (an empty queue, an avail index or head out of range, chains
/// of several descriptors, indirect tables, buffers outside memory) is left to [`pop`], i.e. to
/// `virtio-queue`, which reads the same ring state: the queue's `next_avail` and `next_used`
/// stay the one record of where the device is.
pub(crate) struct Rings<'a, M: GuestMemory + ?Sized + 'a> {
    mem: &'a M::PhysicalMemory,
    desc: VolatileSlice<'a, MS<'a, M::PhysicalMemory>>,
    avail: VolatileSlice<'a, MS<'a, M::PhysicalMemory>>,
    used: VolatileSlice<'a, MS<'a, M::PhysicalMemory>>,
    size: u16,
    event_idx: bool,
    /// `next_used` when the pass began: the notification check covers what was added since.
    start_used: u16,
}

impl<'a, M: GuestMemory + ?Sized> Rings<'a, M> {
    /// The rings of `queue` if each lies within one region of plain (non-IOMMU) memory.
    pub(crate) fn new(queue: &Queue, mem: &'a M) -> Option<Self> {
        let size = queue.size();
        if !queue.ready() || size == 0 {
            return None;
        }
        let pm = mem.physical_memory()?;
        let n = usize::from(size);
        // With event-idx, each ring has one more u16 after its entries (used_event, avail_event).
        let desc = pm
            .get_slice(GuestAddress(queue.desc_table()), 16 * n)
            .ok()?;
        let avail = pm
            .get_slice(GuestAddress(queue.avail_ring()), 6 + 2 * n)
            .ok()?;
        let used = pm
            .get_slice(GuestAddress(queue.used_ring()), 6 + 8 * n)
            .ok()?;
        Some(Rings {
            mem: pm,
            desc,
            avail,
            used,
            size,
            event_idx: queue.event_idx_enabled(),
            start_used: queue.next_used(),
        })
    }

    /// The next available chain if it is one descriptor, device-`writable` (or readable), of
    /// non-zero length and inside one memory region; `None` leaves everything as it was, for
    /// [`pop`] to look at. `segs` is recycled storage for the segment list.
    pub(crate) fn pop(
        &self,
        queue: &mut Queue,
        writable: bool,
        segs: &mut Vec<(GuestAddress, u32)>,
    ) -> Option<Buffer> {
        let next = queue.next_avail();
        // Acquire: the entries and descriptors the driver wrote before the index.
        let idx = u16::from_le(self.avail.load(2, Ordering::Acquire).ok()?);
        let pending = idx.wrapping_sub(next);
        if pending == 0 || pending > self.size {
            return None;
        }
        let slot = 4 + 2 * usize::from(next % self.size);
        let head = u16::from_le(self.avail.load(slot, Ordering::Acquire).ok()?);
        if head >= self.size {
            return None;
        }
        let desc: Descriptor = self.desc.read_obj(16 * usize::from(head)).ok()?;
        if desc.has_next() || desc.refers_to_indirect_table() || desc.is_write_only() != writable {
            return None;
        }
        let len = desc.len();
        if len == 0 || self.mem.get_slice(desc.addr(), len as usize).is_err() {
            return None;
        }
        queue.set_next_avail(next.wrapping_add(1));
        segs.clear();
        segs.push((desc.addr(), len));
        Some(Buffer {
            head,
            segs: std::mem::take(segs),
            len: u64::from(len),
        })
    }

    /// Put `head` with `len` bytes in the used ring and publish it (as `Queue::add_used`).
    pub(crate) fn add_used(&self, queue: &mut Queue, head: u16, len: u32) -> bool {
        if head >= self.size {
            return false;
        }
        let next = queue.next_used();
        let slot = 4 + 8 * usize::from(next % self.size);
        // struct virtq_used_elem { le32 id; le32 len; }
        let elem = (u64::from(len) << 32 | u64::from(head)).to_le();
        if self.used.write_obj(elem, slot).is_err() {
            return false;
        }
        let new = next.wrapping_add(1);
        // Release: the element before the index.
        if self.used.store(new.to_le(), 2, Ordering::Release).is_err() {
            return false;
        }
        queue.set_next_used(new);
        true
    }

    /// Whether the driver wants an interrupt for the buffers used since [`Rings::new`] (as
    /// `Queue::needs_notification`, for every buffer of the pass, however it was returned).
    pub(crate) fn needs_interrupt(&self, queue: &Queue) -> bool {
        if !self.event_idx {
            return true;
        }
        // The used-ring writes before the read of used_event (pairs with the driver's fence
        // between writing used_event and reading the used index).
        fence(Ordering::SeqCst);
        let Ok(event) = self
            .avail
            .load::<u16>(4 + 2 * usize::from(self.size), Ordering::Relaxed)
        else {
            return true;
        };
        let used = queue.next_used();
        used.wrapping_sub(u16::from_le(event)).wrapping_sub(1) < used.wrapping_sub(self.start_used)
    }
}

/// Return a buffer to the driver.
pub(crate) fn add_used<M: GuestMemory>(
    queue: &mut Queue,
    index: u16,
    mem: &M,
    head: u16,
    len: u32,
) -> Result<(), DeviceError> {
    queue
        .add_used(mem, head, len)
        .map_err(|source| DeviceError::UsedRing {
            queue: index,
            source,
        })
}

/// Re-arm driver notifications; `true` if more buffers arrived meanwhile.
pub(crate) fn rearm<M: GuestMemory>(
    queue: &mut Queue,
    index: u16,
    mem: &M,
) -> Result<bool, DeviceError> {
    queue
        .enable_notification(mem)
        .map_err(|source| DeviceError::Notification {
            queue: index,
            source,
        })
}

/// Whether the driver wants an interrupt for what was added since the last call.
pub(crate) fn needs_interrupt<M: GuestMemory>(
    queue: &mut Queue,
    index: u16,
    mem: &M,
) -> Result<bool, DeviceError> {
    queue
        .needs_notification(mem)
        .map_err(|source| DeviceError::Notification {
            queue: index,
            source,
        })
}

/// Write `data` into the buffer's segments from the start; returns bytes written (stops at the
/// end of the buffer). Guest memory errors end the copy early.
pub(crate) fn write_to_buffer<M: GuestMemory>(mem: &M, buf: &Buffer, mut data: &[u8]) -> usize {
    write_at(mem, buf, 0, &mut data)
}

/// Write from `data` at byte offset `at` of the buffer, advancing `data`; returns bytes written.
pub(crate) fn write_at<M: GuestMemory>(mem: &M, buf: &Buffer, at: u64, data: &mut &[u8]) -> usize {
    let mut skip = at;
    let mut written = 0usize;
    for &(addr, len) in &buf.segs {
        if data.is_empty() {
            break;
        }
        let len = u64::from(len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let room = (len - skip) as usize;
        let n = room.min(data.len());
        let Some(dst) = addr.0.checked_add(skip) else {
            break;
        };
        if !copy_to_guest(mem, GuestAddress(dst), &data[..n]) {
            break;
        }
        skip = 0;
        written += n;
        *data = &data[n..];
    }
    written
}

/// Read into `out` from byte offset `at` of the buffer; returns bytes read (`None` on a guest
/// memory error).
pub(crate) fn read_at<M: GuestMemory>(
    mem: &M,
    buf: &Buffer,
    at: u64,
    out: &mut [u8],
) -> Option<usize> {
    let mut skip = at;
    let mut done = 0usize;
    for &(addr, len) in &buf.segs {
        if done == out.len() {
            break;
        }
        let len = u64::from(len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        let src = GuestAddress(addr.0.checked_add(skip)?);
        if !copy_from_guest(mem, src, &mut out[done..done + n]) {
            return None;
        }
        skip = 0;
        done += n;
    }
    Some(done)
}

/// Copy `src` into guest memory at `addr`; `false` if any of it lies outside guest memory.
/// Ranges within one region of plain (non-IOMMU) memory, the data path's case, are copied
/// through one slice of that region; anything else goes through `Bytes::write_slice`.
fn copy_to_guest<M: GuestMemory>(mem: &M, addr: GuestAddress, src: &[u8]) -> bool {
    if let Some(slice) = mem
        .physical_memory()
        .and_then(|m| m.get_slice(addr, src.len()).ok())
    {
        slice.copy_from(src);
        return true;
    }
    mem.write_slice(src, addr).is_ok()
}

/// Fill `out` from guest memory at `addr`; `false` if any of it lies outside guest memory.
/// (The same one-region fast path as [`copy_to_guest`].)
fn copy_from_guest<M: GuestMemory>(mem: &M, addr: GuestAddress, out: &mut [u8]) -> bool {
    if let Some(slice) = mem
        .physical_memory()
        .and_then(|m| m.get_slice(addr, out.len()).ok())
    {
        slice.copy_to(out);
        return true;
    }
    mem.read_slice(out, addr).is_ok()
}

/// Whether `addr..addr + len` is guest memory accessible with `access`: one region lookup for
/// a range within one region of plain memory, `GuestMemory::check_range` otherwise.
fn in_guest_memory<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    len: usize,
    access: Permissions,
) -> bool {
    mem.physical_memory()
        .is_some_and(|m| m.get_slice(addr, len).is_ok())
        || mem.check_range(addr, len, access)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Two adjacent regions (0x0..0x1000, 0x1000..0x2000), then a hole up to 0x3000 and a third.
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x3000), 0x1000),
        ])
        .unwrap()
    }

    fn buffer(segs: &[(u64, u32)]) -> Buffer {
        Buffer {
            head: 0,
            segs: segs.iter().map(|&(a, l)| (GuestAddress(a), l)).collect(),
            len: segs.iter().map(|&(_, l)| u64::from(l)).sum(),
        }
    }

    #[test]
    fn copies_cross_adjacent_regions_and_stop_at_holes() {
        let mem = memory();
        let data: Vec<u8> = (0..=255u8).cycle().take(0x200).collect();
        // One segment across the boundary of two regions, then one in the third region.
        let buf = buffer(&[(0xf00, 0x200), (0x3000, 0x10)]);
        assert!(in_guest_memory(
            &mem,
            GuestAddress(0xf00),
            0x200,
            Permissions::Write
        ));
        assert_eq!(write_to_buffer(&mem, &buf, &data), 0x200);
        let mut back = vec![0u8; 0x200];
        assert_eq!(read_at(&mem, &buf, 0, &mut back), Some(0x200));
        assert_eq!(back, data);
        let mut tail = [0u8; 0x10];
        mem.read_slice(&mut tail, GuestAddress(0x3000)).unwrap();
        assert_eq!(tail, [0u8; 0x10]);
        // At an offset that starts in the second segment.
        let mut src = &data[..0x10];
        assert_eq!(write_at(&mem, &buf, 0x200, &mut src), 0x10);
        mem.read_slice(&mut tail, GuestAddress(0x3000)).unwrap();
        assert_eq!(tail[..], data[..0x10]);

        // Into the hole: refused by the check, and a copy stops there.
        assert!(!in_guest_memory(
            &mem,
            GuestAddress(0x1f00),
            0x200,
            Permissions::Write
        ));
        let holed = buffer(&[(0x1f00, 0x200)]);
        assert_eq!(write_to_buffer(&mem, &holed, &data), 0);
        assert_eq!(read_at(&mem, &holed, 0, &mut back), None);
        // Past the end of guest memory.
        assert!(!in_guest_memory(
            &mem,
            GuestAddress(0x3ff0),
            0x20,
            Permissions::Read
        ));
        assert!(!in_guest_memory(
            &mem,
            GuestAddress(u64::MAX - 4),
            0x10,
            Permissions::Read
        ));
    }
}
