//! vCPUs: register setup for the 64-bit and PVH boot protocols and the threads that run them.
//!
//! Each vCPU runs `KVM_RUN` on its own thread and sends port and MMIO exits to the buses. The
//! event-loop thread pauses, resumes, resets and stops them through [`VcpuControl`]: it posts a
//! request, then kicks each thread out of `KVM_RUN` with a signal until all have parked.

use devices::bus::Bus;
use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

use super::boot::{BootProtocol, EntryPoint, GDT};
use super::memory::{BOOT_STACK, GDT_ADDR, PML4_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR};

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

/// Installs the (empty) handler of the kick signal; call once before starting vCPUs.
pub fn install_kick_handler() -> Result<(), String> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
        .map_err(|e| format!("cannot install the vCPU kick handler: {e}"))
}

/// CPUID from KVM's supported set, with this vCPU's APIC id.
pub fn cpuid(kvm: &Kvm, id: u8) -> Result<CpuId, String> {
    let mut c = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    for e in c.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24);
                e.ecx |= 1 << 31; // running under a hypervisor
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    Ok(c)
}

fn msrs() -> Msrs {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, 1), // fast strings
    ])
    .expect("a fixed list of 10 MSRs fits")
}

fn segment(selector: u16, descriptor: u64) -> kvm_segment {
    let flags = (descriptor >> 40) as u16;
    let g = (flags >> 15) & 1;
    kvm_segment {
        base: 0,
        // KVM takes the limit in bytes: a 4 KiB-granular 0xfffff is 4 GiB (it matters in
        // 32-bit protected mode, the PVH entry).
        limit: if g == 1 { 0xffff_ffff } else { 0xf_ffff },
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: g as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the vCPU in the state the boot protocol asks for: BSP in long mode at `entry` with
/// `%rsi` = boot params, or for PVH in 32-bit protected mode (paging off) with `%ebx` = start
/// info; APs waiting for INIT/SIPI.
pub fn setup(vcpu: &VcpuFd, id: u8, entry: EntryPoint) -> Result<(), String> {
    let err = |what: &str, e: kvm_ioctls::Error| format!("vCPU {id}: {what}: {e}");
    vcpu.set_msrs(&msrs()).map_err(|e| err("KVM_SET_MSRS", e))?;
    vcpu.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })
    .map_err(|e| err("KVM_SET_FPU", e))?;
    let mut lapic = vcpu.get_lapic().map_err(|e| err("KVM_GET_LAPIC", e))?;
    for (reg, mode) in [(0x350usize, 7u32), (0x360, 4)] {
        // LVT0 = ExtINT, LVT1 = NMI, as a BIOS leaves them.
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = lapic.regs[reg + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *x as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(|e| err("KVM_SET_LAPIC", e))?;
    if id != 0 {
        return vcpu
            .set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_UNINITIALIZED,
            })
            .map_err(|e| err("KVM_SET_MP_STATE", e));
    }
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(|e| err("KVM_SET_MP_STATE", e))?;
    let pvh = entry.protocol == BootProtocol::Pvh;
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        ..Default::default()
    };
    if pvh {
        regs.rbx = PVH_INFO_ADDR;
    } else {
        regs.rsi = ZERO_PAGE_ADDR;
    }
    vcpu.set_regs(&regs).map_err(|e| err("KVM_SET_REGS", e))?;
    let mut s = vcpu.get_sregs().map_err(|e| err("KVM_GET_SREGS", e))?;
    s.cs = if pvh {
        segment(0x28, GDT[5])
    } else {
        segment(0x08, GDT[1])
    };
    let data = segment(0x10, GDT[2]);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(0x18, GDT[3]);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (GDT.len() * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    if pvh {
        // PVH: CR0 = PE | ET, everything else (paging, CR4, EFER.LME) off.
        s.cr0 = 0x11;
        s.cr3 = 0;
        s.cr4 = 0;
        s.efer = 0;
    } else {
        s.cr3 = PML4_ADDR;
        s.cr4 |= 0x20; // PAE
        s.cr0 = (s.cr0 | 0x8000_0011) & !0x6000_0000; // PG | ET | PE, caches on
        s.efer |= 0x500; // LME | LMA
    }
    vcpu.set_sregs(&s).map_err(|e| err("KVM_SET_SREGS", e))
}

/// What the event loop asks of the vCPUs.
#[derive(Debug, Default)]
struct Ctl {
    paused: bool,
    exit: bool,
    /// Bumped by a reset; a vCPU that sees a new value sets itself up again.
    generation: u64,
    entry: Option<EntryPoint>,
    /// How many vCPU threads are parked (waiting while paused).
    parked: usize,
}

/// Why a vCPU stopped the machine.
pub struct VcpuEvents {
    /// The guest powered off (KVM system event, ACPI S5 handled in the PM device).
    pub shutdown: EventFd,
    /// The guest asked for a reset (triple fault, KVM system event).
    pub reset: EventFd,
    /// KVM could not run the guest (entry failure, internal error).
    pub crash: EventFd,
}

/// Pause / resume / reset / stop of all vCPU threads.
pub struct VcpuControl {
    ctl: Mutex<Ctl>,
    cv: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl VcpuControl {
    pub fn new(entry: EntryPoint, paused: bool) -> Arc<Self> {
        Arc::new(VcpuControl {
            ctl: Mutex::new(Ctl {
                paused,
                entry: Some(entry),
                ..Default::default()
            }),
            cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick_all(&self) {
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // SAFETY: the thread handle is alive (joined only in `stop`, which holds the same
            // lock), and the signal has a handler installed by `install_kick_handler`.
            unsafe {
                libc::pthread_kill(t.as_pthread_t(), kick_signal());
            }
        }
    }

    /// Stops every vCPU and waits until all are parked (they are out of `KVM_RUN`).
    pub fn pause(&self) {
        let n = self.threads.lock().unwrap_or_else(|e| e.into_inner()).len();
        let mut c = self.lock();
        c.paused = true;
        while c.parked < n && !c.exit {
            drop(c);
            self.kick_all();
            c = self.lock();
            c = self
                .cv
                .wait_timeout(c, Duration::from_millis(2))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.lock().paused = false;
        self.cv.notify_all();
    }

    /// Makes every vCPU set itself up again (at `entry`) before it next runs. Call while paused.
    pub fn reset(&self, entry: EntryPoint) {
        let mut c = self.lock();
        c.generation += 1;
        c.entry = Some(entry);
    }

    /// Ends and joins every vCPU thread.
    pub fn stop(&self) {
        self.lock().exit = true;
        self.cv.notify_all();
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        for t in threads.iter() {
            // SAFETY: as in `kick_all`; the threads are joined below, after the kicks.
            unsafe {
                libc::pthread_kill(t.as_pthread_t(), kick_signal());
            }
        }
        // A vCPU in KVM_RUN leaves it at the kick; keep kicking until all are gone.
        while let Some(t) = threads.pop() {
            while !t.is_finished() {
                // SAFETY: as above; the thread has not been joined yet.
                unsafe {
                    libc::pthread_kill(t.as_pthread_t(), kick_signal());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }

    /// Starts the thread of one vCPU.
    pub fn spawn(
        self: &Arc<Self>,
        mut vcpu: VcpuFd,
        id: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        events: Arc<VcpuEvents>,
    ) -> Result<(), String> {
        let ctl = self.clone();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || ctl.run(&mut vcpu, id, &pio, &mmio, &events))
            .map_err(|e| format!("cannot start vCPU {id}: {e}"))?;
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t);
        Ok(())
    }

    fn run(&self, vcpu: &mut VcpuFd, id: u8, pio: &Bus, mmio: &Bus, events: &VcpuEvents) {
        let mut generation = 0;
        // Set after a triple fault / error: do not run until reset.
        let mut halted = false;
        let mut hlt_seen = false;
        loop {
            {
                let mut c = self.lock();
                loop {
                    if c.exit {
                        return;
                    }
                    if c.generation != generation {
                        generation = c.generation;
                        halted = false;
                        if let Some(entry) = c.entry {
                            if let Err(e) = setup(vcpu, id, entry) {
                                log::error!("{e}");
                                halted = true;
                                let _ = events.crash.write(1);
                            }
                        }
                    }
                    if !c.paused && !halted {
                        break;
                    }
                    c.parked += 1;
                    self.cv.notify_all();
                    c = self.cv.wait(c).unwrap_or_else(|e| e.into_inner());
                    c.parked -= 1;
                }
            }
            match vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) => {
                    // With the in-kernel LAPIC, KVM halts in the kernel; an exit here means
                    // this KVM does not, so wait a little and let it re-check for interrupts.
                    if !hlt_seen {
                        hlt_seen = true;
                        log::info!("vCPU {id}: HLT exits to userspace; polling for interrupts");
                    }
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(VcpuExit::Shutdown) => {
                    log::info!("vCPU {id}: triple fault, resetting");
                    halted = true;
                    let _ = events.reset.write(1);
                }
                Ok(VcpuExit::SystemEvent(ty, _)) => {
                    halted = true;
                    match ty {
                        KVM_SYSTEM_EVENT_SHUTDOWN => events.shutdown.write(1),
                        KVM_SYSTEM_EVENT_RESET => events.reset.write(1),
                        _ => events.crash.write(1),
                    }
                    .ok();
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    log::error!("vCPU {id}: KVM entry failed (reason {reason:#x}, cpu {cpu})");
                    halted = true;
                    let _ = events.crash.write(1);
                }
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal`
                    // member of the exit union, which is plain data.
                    let info = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                    let n = (info.ndata as usize).min(info.data.len());
                    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                    log::error!(
                        "vCPU {id}: KVM internal error, suberror {} (1 = emulation failure), rip {rip:#x}, data {:x?}",
                        info.suberror,
                        &info.data[..n]
                    );
                    halted = true;
                    let _ = events.crash.write(1);
                }
                Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {}
                Ok(other) => log::debug!("vCPU {id}: unhandled exit {other:?}"),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    log::error!("vCPU {id}: KVM_RUN: {e}");
                    halted = true;
                    let _ = events.crash.write(1);
                }
            }
        }
    }
}
