//! Loading the guest: kernel (bzImage or ELF vmlinux), initrd, command line, boot params with the
//! e820 map, and the identity page tables and GDT of the 64-bit boot protocol.
//!
//! A bzImage, and an ELF kernel without a PVH note, is entered in long mode at the kernel's 64-bit
//! entry (`startup_64`) with `%rsi` pointing at the boot params, as described in the kernel's
//! `Documentation/arch/x86/boot.rst` ("64-bit boot protocol"). An ELF kernel with a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note is entered through the PVH boot protocol (Xen's
//! `docs/misc/pvh.pandoc`, `xen/include/public/arch-x86/hvm/start_info.h`): 32-bit protected mode,
//! flat segments, paging off, at the note's entry address, with `%ebx` pointing at an
//! `hvm_start_info` (command line, memory map, initrd as module 0, RSDP).

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, load_cmdline, Cmdline, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::memory::*;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Long mode on the identity map, `%rsi` = boot params (bzImage, ELF without a PVH note).
    Linux64,
    /// 32-bit protected mode, paging off, `%ebx` = `hvm_start_info` (ELF with a PVH note).
    Pvh,
}

/// Where the vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct EntryPoint {
    pub rip: u64,
    pub protocol: BootProtocol,
}

/// What the kernel loader produced, kept so the VM can be reset.
pub struct LoadedKernel {
    pub entry: EntryPoint,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage setup header, if the kernel was a bzImage.
    pub header: Option<setup_header>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const XLF_KERNEL_64: u16 = 1;

/// Loads the kernel at `path`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, String> {
    let what = |e: &dyn std::fmt::Display| format!("-kernel {}: {e}", path.display());
    let mut f = File::open(path).map_err(|e| what(&e))?;
    let mut head = [0u8; 0x220];
    let n = read_up_to(&mut f, &mut head).map_err(|e| what(&e))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| what(&e))?;
    if n >= 4 && &head[..4] == ELF_MAGIC {
        let r = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| what(&format!("not a loadable x86-64 ELF kernel ({e})")))?;
        let entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) if a.0 < 1 << 32 => EntryPoint {
                rip: a.0,
                protocol: BootProtocol::Pvh,
            },
            _ => EntryPoint {
                rip: r.kernel_load.0,
                protocol: BootProtocol::Linux64,
            },
        };
        return Ok(LoadedKernel {
            entry,
            end: r.kernel_end,
            header: None,
        });
    }
    if n >= 0x206
        && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]) == HDRS_MAGIC
    {
        let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| what(&format!("corrupt bzImage ({e})")))?;
        let hdr = r
            .setup_header
            .ok_or_else(|| what(&"bzImage without a setup header"))?;
        if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(what(
                &"this bzImage has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64 needed)",
            ));
        }
        return Ok(LoadedKernel {
            entry: EntryPoint {
                rip: r.kernel_load.0 + 0x200,
                protocol: BootProtocol::Linux64,
            },
            end: r.kernel_end,
            header: Some(hdr),
        });
    }
    Err(what(&"not a kernel (neither a bzImage nor an ELF vmlinux)"))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads the initrd as high in low memory as the kernel allows. Returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<(u64, u64), String> {
    let what = |e: &dyn std::fmt::Display| format!("-initrd {}: {e}", path.display());
    let mut f = File::open(path).map_err(|e| what(&e))?;
    let size = f.metadata().map_err(|e| what(&e))?.len();
    // Linux's default limit for kernels that do not say (boot protocol < 2.03).
    let max = kernel
        .header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(0x37ff_ffff);
    let top = low_ram_end(mem_size).min(max + 1);
    let lowest = kernel.end.div_ceil(0x1000) * 0x1000;
    let addr = top.checked_sub(size).map(|a| a & !0xfff);
    let addr = match addr {
        Some(a) if a >= lowest && size > 0 => a,
        _ if size == 0 => return Err(what(&"empty file")),
        _ => {
            return Err(what(&format!(
                "too big for guest memory ({} MiB initrd, {} MiB free above the kernel); raise -m",
                size >> 20,
                top.saturating_sub(lowest) >> 20
            )))
        }
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| what(&e))?;
    Ok((addr, size))
}

/// Writes the command line and what the kernel's boot protocol reads at entry: the boot params
/// (with e820 map, initrd and RSDP), or for PVH the `hvm_start_info` with its memory map and module
/// list.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), String> {
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(|e| format!("-append: cannot place the command line: {e}"))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| format!("-append: {e}"))?
        .as_bytes()
        .len();
    if kernel.entry.protocol == BootProtocol::Pvh {
        return write_start_info(mem, mem_size, initrd, rsdp);
    }
    let mut params = boot_params::default();
    if let Some(h) = kernel.header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.loadflags |= 0x01; // LOADED_HIGH
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let map = e820(mem_size);
    for (i, (addr, size, ty)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *ty,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| format!("cannot write the boot params: {e}"))
}

/// `hvm_start_info.magic` ("xEn3" with the top bit of the last byte set).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Writes the PVH `hvm_start_info` at [`PVH_INFO_ADDR`], its memory map at [`PVH_MEMMAP_ADDR`]
/// and, with an initrd, a one-entry module list at [`PVH_MODLIST_ADDR`].
fn write_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), String> {
    let map: Vec<hvm_memmap_table_entry> = e820(mem_size)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&map, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| format!("cannot write the PVH start info: {e}"))
}

/// The GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18, two slots in long mode), 32-bit
/// code (0x28, the PVH entry's CS).
pub const GDT: [u64; 6] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
    0,
    0x00cf_9b00_0000_ffff,
];

/// Writes the GDT and the identity map of the first 4 GiB (2 MiB pages) the entry code runs on.
pub fn write_page_tables_and_gdt(mem: &GuestMemoryMmap) -> Result<(), String> {
    let err = |e: vm_memory::GuestMemoryError| format!("cannot write the boot page tables: {e}");
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(err)?;
    }
    mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))
        .map_err(err)?;
    for g in 0..4u64 {
        let pd = PD_ADDR + g * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(PDPT_ADDR + 8 * g))
            .map_err(err)?;
        let mut entries = vec![0u8; 4096];
        for i in 0..512u64 {
            let e = ((g << 30) | (i << 21)) | 0x83; // present, writable, 2 MiB page
            entries[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd)).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(protocol: BootProtocol) -> LoadedKernel {
        LoadedKernel {
            entry: EntryPoint {
                rip: 0x10_0220,
                protocol,
            },
            end: 0x20_0000,
            header: None,
        }
    }

    #[test]
    fn pvh_start_info_has_cmdline_memmap_initrd_and_rsdp() {
        let size = 64 << 20;
        let mem = create(size).unwrap();
        let mut cmdline = Cmdline::new(4096).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        write_boot_params(
            &mem,
            size,
            &kernel(BootProtocol::Pvh),
            &cmdline,
            Some((0x3f0_0000, 12345)),
            ACPI_START,
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.rsdp_paddr, ACPI_START);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        let mut text = [0u8; 14];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0\0");
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x3f0_0000, 12345));
        let map = e820(size);
        assert_eq!(info.memmap_entries as usize, map.len());
        for (i, (addr, len, ty)) in map.iter().enumerate() {
            let e: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(info.memmap_paddr + 24 * i as u64))
                .unwrap();
            assert_eq!((e.addr, e.size, e.type_), (*addr, *len, *ty));
        }
        // The tables stay below the boot params and clear of the GDT.
        assert!(info.memmap_paddr + 24 * map.len() as u64 <= ZERO_PAGE_ADDR);
        assert!(PVH_INFO_ADDR >= GDT_ADDR + 8 * GDT.len() as u64);
    }

    #[test]
    fn pvh_without_initrd_has_no_modules_and_linux64_writes_no_start_info() {
        let size = 32 << 20;
        let mem = create(size).unwrap();
        let cmdline = Cmdline::new(4096).unwrap();
        write_boot_params(&mem, size, &kernel(BootProtocol::Pvh), &cmdline, None, 0).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));

        let mem = create(size).unwrap();
        write_boot_params(
            &mem,
            size,
            &kernel(BootProtocol::Linux64),
            &cmdline,
            None,
            0,
        )
        .unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(magic, 0);
        let hdr: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR + 0x202)).unwrap();
        assert_eq!(hdr, HDRS_MAGIC);
    }
}
