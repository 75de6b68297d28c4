//! ACPI tables (RSDP → XSDT → FADT, MADT; FADT → DSDT) describing the machine to the guest, and
//! the hardware-reduced ACPI power-management registers (sleep control / reset).
//!
//! The DSDT carries what a stock distribution kernel needs to find the devices: one `LNRO0005`
//! (virtio-mmio) device per window with its `Memory32Fixed` and edge `Interrupt` resources, the
//! COM1 UART, and a power button (`PNP0C0C`) notified through a Generic Event Device
//! (`ACPI0013`), which is how `system_powerdown` reaches a hardware-reduced ACPI guest.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use devices::bus::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::memory::{ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR};

const OEM_ID: [u8; 6] = *b"VAGENT";
const OEM_TABLE: [u8; 8] = *b"VAGENTVM";

/// The PM registers' I/O ports: sleep control, sleep status, reset.
pub const PM_PORT: u16 = 0x600;
pub const PM_PORT_LEN: u64 = 4;
const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = 1;
const RESET_REG: u64 = 2;
/// Written to the reset register to reset the machine.
pub const RESET_VALUE: u8 = 1;
/// `_S5_` sleep type: SLP_TYP 5 with SLP_EN (bit 5) set powers off.
pub const S5_SLP_TYP: u8 = 5;

/// A virtio-mmio device as the tables describe it.
#[derive(Debug, Clone, Copy)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub len: u64,
    pub gsi: u32,
}

/// What the tables describe.
pub struct AcpiConfig<'a> {
    pub vcpus: u8,
    pub mmio: &'a [MmioDeviceInfo],
    pub serial_gsi: u32,
    pub ged_gsi: u32,
}

fn name_seg(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:02X}")
}

/// The DSDT's AML body.
pub fn dsdt_body(cfg: &AcpiConfig) -> Vec<u8> {
    let mut devices: Vec<Vec<u8>> = Vec::new();
    for (i, d) in cfg.mmio.iter().enumerate() {
        let mem = aml::Memory32Fixed::new(true, d.base as u32, d.len as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.gsi);
        let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
        let hid = aml::Name::new("_HID".into(), &"LNRO0005");
        let uid = aml::Name::new("_UID".into(), &(i as u32));
        let crs = aml::Name::new("_CRS".into(), &crs);
        let dev = aml::Device::new(name_seg("VR", i).as_str().into(), vec![&hid, &uid, &crs]);
        let mut v = Vec::new();
        dev.to_aml_bytes(&mut v);
        devices.push(v);
    }
    let mut v = Vec::new();
    // COM1.
    {
        let io = aml::IO::new(0x3f8, 0x3f8, 0, 8);
        let irq = aml::Interrupt::new(true, true, false, false, cfg.serial_gsi);
        let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let crs = aml::Name::new("_CRS".into(), &crs);
        aml::Device::new("COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut v);
    }
    // Power button, notified by the GED.
    {
        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        aml::Device::new("PWRB".into(), vec![&hid, &uid]).to_aml_bytes(&mut v);
    }
    {
        let hid = aml::Name::new("_HID".into(), &"ACPI0013");
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let irq = aml::Interrupt::new(true, true, false, false, cfg.ged_gsi);
        let crs = aml::ResourceTemplate::new(vec![&irq]);
        let crs = aml::Name::new("_CRS".into(), &crs);
        let pwrb = aml::Path::new("\\_SB_.PWRB");
        let val: u8 = 0x80;
        let notify = aml::Notify::new(&pwrb, &val);
        let evt = aml::Method::new("_EVT".into(), 1, true, vec![&notify]);
        aml::Device::new("GED_".into(), vec![&hid, &uid, &crs, &evt]).to_aml_bytes(&mut v);
    }
    for d in &devices {
        v.extend_from_slice(d);
    }
    let mut out = Vec::new();
    out.extend(aml::Scope::raw("\\_SB_".into(), v));
    let s5 = aml::Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &aml::ZERO, &aml::ZERO]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut out);
    out
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// Builds every table and writes them at [`ACPI_START`]. Returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<u64, String> {
    let rsdp_addr = ACPI_START;
    let mut next = ACPI_START + 0x40; // after the RSDP (36 bytes)
    let mut place = |data: &[u8]| -> Result<u64, String> {
        let at = next;
        let end = at + data.len() as u64;
        if end > ACPI_END {
            return Err("ACPI tables do not fit below 1 MiB".to_string());
        }
        mem.write_slice(data, GuestAddress(at))
            .map_err(|e| format!("cannot write the ACPI tables: {e}"))?;
        next = end.div_ceil(16) * 16;
        Ok(at)
    };

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    dsdt.append_slice(&dsdt_body(cfg));
    let dsdt_addr = place(dsdt.as_slice())?;

    let pm = |off: u64| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(PM_PORT) + off,
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = pm(RESET_REG);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = pm(SLEEP_CONTROL);
    fadt.sleep_status_reg = pm(SLEEP_STATUS);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"VAGENTVM").into();
    let fadt_addr = place(&bytes(&fadt.finalize()))?;

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for i in 0..cfg.vcpus {
        madt.add_structure(ProcessorLocalApic::new(i, i, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cfg.vcpus, IOAPIC_ADDR, 0));
    let madt_addr = place(&bytes(&madt))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(&bytes(&xsdt))?;

    mem.write_slice(
        &bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        GuestAddress(rsdp_addr),
    )
    .map_err(|e| format!("cannot write the RSDP: {e}"))?;
    Ok(rsdp_addr)
}

/// The hardware-reduced ACPI sleep control / reset registers.
pub struct PmDevice {
    shutdown: EventFd,
    reset: EventFd,
}

impl PmDevice {
    /// `shutdown` and `reset` are written when the guest asks for S5 or a reset.
    pub fn new(shutdown: EventFd, reset: EventFd) -> Self {
        PmDevice { shutdown, reset }
    }
}

impl BusDevice for PmDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if v & (1 << 5) != 0 && (v >> 2) & 7 == S5_SLP_TYP => {
                let _ = self.shutdown.write(1);
            }
            RESET_REG if v == RESET_VALUE => {
                let _ = self.reset.write(1);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_chain_and_checksums() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let mmio = [MmioDeviceInfo {
            base: 0xd000_0000,
            len: 0x200,
            gsi: 5,
        }];
        let cfg = AcpiConfig {
            vcpus: 2,
            mmio: &mmio,
            serial_gsi: 4,
            ged_gsi: 9,
        };
        let rsdp = write_tables(&mem, &cfg).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let read_table = |a: u64| {
            let len: u32 = mem.read_obj(GuestAddress(a + 4)).unwrap();
            let mut t = vec![0u8; len as usize];
            mem.read_slice(&mut t, GuestAddress(a)).unwrap();
            assert!(checksum_ok(&t), "checksum of table at {a:#x}");
            t
        };
        let x = read_table(xsdt);
        assert_eq!(&x[..4], b"XSDT");
        let fadt = read_table(u64::from_le_bytes(x[36..44].try_into().unwrap()));
        assert_eq!(&fadt[..4], b"FACP");
        let madt = read_table(u64::from_le_bytes(x[44..52].try_into().unwrap()));
        assert_eq!(&madt[..4], b"APIC");
        let dsdt = read_table(u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!(&dsdt[..4], b"DSDT");
        let pos = dsdt.windows(8).position(|w| w == b"LNRO0005").unwrap();
        // Memory32Fixed (0x86) then the extended interrupt (0x89) with the window and GSI.
        let m = pos + dsdt[pos..].iter().position(|&b| b == 0x86).unwrap();
        assert_eq!(
            u32::from_le_bytes(dsdt[m + 4..m + 8].try_into().unwrap()),
            0xd000_0000
        );
        assert_eq!(
            u32::from_le_bytes(dsdt[m + 8..m + 12].try_into().unwrap()),
            0x200
        );
        assert_eq!(dsdt[m + 12], 0x89);
        assert_eq!(dsdt[m + 15] & 0x2, 0x2, "edge triggered");
        assert_eq!(
            u32::from_le_bytes(dsdt[m + 17..m + 21].try_into().unwrap()),
            5
        );
    }

    #[test]
    fn pm_device_signals_s5_and_reset() {
        let s = EventFd::new(0).unwrap();
        let r = EventFd::new(0).unwrap();
        let mut pm = PmDevice::new(s.try_clone().unwrap(), r.try_clone().unwrap());
        pm.write(SLEEP_CONTROL, &[(S5_SLP_TYP << 2) | (1 << 5)]);
        pm.write(RESET_REG, &[RESET_VALUE]);
        pm.write(SLEEP_CONTROL, &[0x3 << 2]); // another sleep state: ignored
        assert_eq!(s.read().unwrap(), 1);
        assert_eq!(r.read().unwrap(), 1);
    }
}
