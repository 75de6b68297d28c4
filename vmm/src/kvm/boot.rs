//! Loading the guest: kernel (bzImage or ELF vmlinux), initrd, command line, boot params with the
//! e820 map, and the identity page tables and GDT of the 64-bit boot protocol.
//!
//! Both kernel formats are entered the same way, in long mode at the kernel's 64-bit entry
//! (`startup_64`) with `%rsi` pointing at the boot params, as described in the kernel's
//! `Documentation/arch/x86/boot.rst` ("64-bit boot protocol").

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, load_cmdline, Cmdline, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::memory::*;

/// Where the vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct EntryPoint {
    pub rip: u64,
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
        return Ok(LoadedKernel {
            entry: EntryPoint {
                rip: r.kernel_load.0,
            },
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

/// Writes the command line, the boot params (with e820 map, initrd and RSDP) for `mem_size`.
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

/// The GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18).
pub const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
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
