//! Guest physical memory: the address map, RAM regions and the e820 map the guest is given.
//!
//! ```text
//! 0x0000_0500  GDT                       0x0000_6000  PVH start info, module list, memory map
//! 0x0000_7000  boot params (zero page)
//! 0x0000_8ff0  boot stack top            0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 PDs
//! 0x0002_0000  kernel command line       0x0009_fc00..0x0010_0000  reserved (ACPI tables at 0xe0000)
//! 0x0010_0000  kernel                    ... initrd at the top of low RAM
//! 0xc000_0000..0x1_0000_0000  MMIO hole: virtio-mmio windows at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above 3 GiB, if any
//! ```

use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const GDT_ADDR: u64 = 0x500;
/// PVH: `hvm_start_info` (56 bytes), the module list (one initrd entry) and the memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 0x1_0000;
pub const EBDA_START: u64 = 0x9_fc00;
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// The virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// The smallest guest the VMM builds: room for the boot structures, tables and a kernel.
pub const MIN_MEM: u64 = 16 << 20;
/// The largest: what fits the 39 address bits the page tables and e820 are laid out for.
pub const MAX_MEM: u64 = 256 << 30;

/// The RAM regions for `size` bytes of guest memory, leaving the MMIO hole out.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Allocates guest RAM.
pub fn create(size: u64) -> Result<GuestMemoryMmap, String> {
    if size < MIN_MEM {
        return Err(format!(
            "-m: {} MiB is too small; the guest needs at least {} MiB",
            size >> 20,
            MIN_MEM >> 20
        ));
    }
    if size > MAX_MEM {
        return Err(format!(
            "-m: {} GiB is too large (at most {} GiB)",
            size >> 30,
            MAX_MEM >> 30
        ));
    }
    GuestMemoryMmap::from_ranges(&ram_ranges(size)).map_err(|e| {
        format!(
            "-m: cannot allocate {} MiB of guest memory: {e}",
            size >> 20
        )
    })
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The guest's memory map: (address, size, type).
pub fn e820(size: u64) -> Vec<(u64, u64, u32)> {
    let mut v = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, ACPI_END - EBDA_START, E820_RESERVED),
        (HIMEM_START, low_ram_end(size) - HIMEM_START, E820_RAM),
    ];
    if size > MMIO_GAP_START {
        v.push((MMIO_GAP_END, size - MMIO_GAP_START, E820_RAM));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(512 << 20).len(), 1);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 as u64 + r[1].1 as u64, 4 << 30);
        let e = e820(4 << 30);
        let ram: u64 = e.iter().filter(|x| x.2 == E820_RAM).map(|x| x.1).sum();
        assert_eq!(ram, (4 << 30) - (ACPI_END - EBDA_START));
    }

    #[test]
    fn size_limits() {
        assert!(create(1 << 20).unwrap_err().contains("too small"));
        assert!(create(MAX_MEM + 1).unwrap_err().contains("too large"));
    }
}
