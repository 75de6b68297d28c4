//! Guest memory a vhost-user frontend shared with us, mapped so that the frontend cannot kill
//! the VMM by shrinking it.
//!
//! The memory arrives as file descriptors in `SET_MEM_TABLE` and is mapped shared. If the
//! frontend later truncates such a file, every access to a page past the new end raises
//! `SIGBUS`, which would end the VMM. With User-Mode Linux the frontend is the guest kernel
//! itself, and its memory is an ordinary unlinked tmpfs file that cannot be sealed, so refusing
//! unsealed memory is not an option. Instead:
//!
//! - a file already shorter than the region it is said to hold is refused at `SET_MEM_TABLE`
//!   ([`check_file_covers`]);
//! - every mapped region is registered in a small lock-free table with the page size of its file
//!   (4 KiB, or the huge page size of a hugetlbfs file), and a process-wide `SIGBUS` handler that
//!   finds the faulting address in it maps a private zero page of that size over the faulting
//!   page (so the access completes, reading zeros and writing nowhere) and counts the fault for
//!   that region;
//! - the backend checks [`SharedMemory::faulted`] after each piece of work and disconnects a
//!   frontend whose memory faulted, with one log line. The mapping, zero pages included, goes
//!   with the session.
//!
//! Any other `SIGBUS` (another address, one sent with `kill`, a page that cannot be replaced) is
//! not ours: the default action is restored and the signal raised again, ending the process as it
//! would have without this module. (The handler replaces std's, which on Linux only reports stack
//! overflows, and those arrive as `SIGSEGV`.)

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Regions registered at once (two sessions' worth of the spec's 8-region memory tables).
const SLOTS: usize = 16;

/// `[start, end)` of each registered mapping; a slot is free while its `end` is 0.
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// The page size of each slot's mapping.
static PAGES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(4096) }; SLOTS];
/// Faults absorbed in each slot's mapping since it was registered.
static FAULTS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static INSTALL: Once = Once::new();

/// Refuses a region whose file is shorter than `offset + size` (its pages would fault at once).
pub fn check_file_covers(file: &File, offset: u64, size: u64) -> io::Result<()> {
    let len = file.metadata()?.len();
    match offset.checked_add(size) {
        Some(end) if end <= len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the file holds {len} bytes, the region needs {size} from offset {offset}"),
        )),
    }
}

/// Shared guest memory whose regions are guarded while it lives (see the module docs).
pub struct SharedMemory {
    // Declared first: dropped after `Drop::drop` has unregistered the slots.
    mem: GuestMemoryMmap,
    slots: Vec<usize>,
}

impl SharedMemory {
    /// Guards every region of `mem`.
    pub fn new(mem: GuestMemoryMmap) -> io::Result<SharedMemory> {
        install_handler()?;
        let mut guarded = SharedMemory {
            mem,
            slots: Vec::new(),
        };
        let ranges: Vec<(usize, usize, usize)> = guarded
            .mem
            .iter()
            .map(|r| {
                // hugetlbfs reports its huge page size as the block size.
                let page = r
                    .file_offset()
                    .and_then(|f| f.file().metadata().ok())
                    .map_or(4096, |m| m.blksize() as usize)
                    .max(4096);
                (r.as_ptr() as usize, r.len() as usize, page)
            })
            .collect();
        for (start, len, page) in ranges {
            if !page.is_power_of_two() {
                return Err(io::Error::other(format!(
                    "page size {page} of shared memory"
                )));
            }
            let slot = register(start, start + len, page)
                .ok_or_else(|| io::Error::other("too many shared memory regions mapped at once"))?;
            guarded.slots.push(slot);
        }
        Ok(guarded)
    }

    /// The memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// True when an access past the end of a shrunk file was absorbed in this memory.
    pub fn faulted(&self) -> bool {
        self.slots
            .iter()
            .any(|&s| FAULTS[s].load(Ordering::SeqCst) > 0)
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        for &s in &self.slots {
            // `end` first: the handler treats a slot with end 0 as free.
            ENDS[s].store(0, Ordering::SeqCst);
            STARTS[s].store(0, Ordering::SeqCst);
        }
    }
}

fn register(start: usize, end: usize, page: usize) -> Option<usize> {
    for s in 0..SLOTS {
        // Claim a free slot by its start (0 = free), then publish the end.
        if STARTS[s]
            .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            PAGES[s].store(page, Ordering::SeqCst);
            FAULTS[s].store(0, Ordering::SeqCst);
            ENDS[s].store(end, Ordering::SeqCst);
            return Some(s);
        }
    }
    None
}

fn install_handler() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `sa.sa_mask` is a valid sigset_t owned by `sa`.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: `sa` is a fully initialised sigaction whose handler is an `extern "C"` fn
        // with the SA_SIGINFO signature; the old action is not needed.
        if unsafe { libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) } != 0 {
            result = Err(io::Error::last_os_error());
        }
    });
    result
}

/// The `SIGBUS` handler. Async-signal-safe: it reads and adds atomics and makes the `mmap`,
/// `sigaction` and `raise` calls only.
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; for a SIGBUS from a
    // fault `si_addr` is the faulting address and `si_code` is positive (a signal sent by a
    // process has `si_code` <= 0 and no meaningful address).
    let (addr, from_fault) = unsafe { ((*info).si_addr() as usize, (*info).si_code > 0) };
    let slot = (0..SLOTS).find(|&s| {
        let end = ENDS[s].load(Ordering::SeqCst);
        let start = STARTS[s].load(Ordering::SeqCst);
        end != 0 && start <= addr && addr < end
    });
    if let Some(s) = slot.filter(|_| from_fault) {
        let page = PAGES[s].load(Ordering::SeqCst);
        let base = addr & !(page - 1);
        // SAFETY: `base..base + page` lies inside a live mapping of ours (registered above and
        // unregistered before it is unmapped; a mapping is aligned to its own page size);
        // replacing that page with a private anonymous one only changes what this process sees
        // there.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            FAULTS[s].fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
    // Not ours (or the page could not be replaced): the default action, as without this handler.
    // SAFETY: an all-zero sigaction with SIG_DFL (0) as handler is valid; the old action is not
    // needed. raise(3) is async-signal-safe; SIGBUS is blocked while this handler runs, so the
    // raised one is delivered, and ends the process, when it returns.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        libc::raise(libc::SIGBUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MmapRegion};

    #[test]
    fn a_shrunk_file_turns_into_counted_faults_not_a_signal() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(4 << 20).unwrap();
        check_file_covers(&file, 0, 4 << 20).unwrap();
        assert!(check_file_covers(&file, 4096, 4 << 20).is_err());
        let region = MmapRegion::build(
            Some(vm_memory::FileOffset::new(file.try_clone().unwrap(), 0)),
            4 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .unwrap();
        let mem =
            GuestMemoryMmap::from_regions(vec![
                GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
            ])
            .unwrap();
        let guarded = SharedMemory::new(mem).unwrap();
        guarded
            .mem()
            .write_obj(0x1234_5678u32, GuestAddress(0))
            .unwrap();
        assert!(!guarded.faulted());
        // The peer shrinks the file: the pages are gone.
        file.set_len(0).unwrap();
        let v: u32 = guarded.mem().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(v, 0);
        guarded.mem().write_obj(7u32, GuestAddress(0x2000)).unwrap();
        assert!(guarded.faulted());
        drop(guarded);
    }
}
