/*
 * tinyguest: a minimal x86-64 guest kernel for testing the vmm on slow (emulating) KVM hosts.
 *
 * It is loaded as an ELF kernel and entered exactly as a Linux vmlinux/bzImage is: in 64-bit
 * long mode on the VMM's page tables and GDT, %rsi = boot params ("zero page"). Built with
 * -DTINYGUEST_PVH it carries a PVH note and is entered at pvh_start instead (32-bit, paging off,
 * %ebx = hvm_start_info), sets up long mode itself and reads the start_info. It then
 *   1. prints on COM1 (8250 at 0x3f8),
 *   2. finds the ACPI tables the VMM built (RSDP by the BIOS-area scan, checked against the
 *      boot params' acpi_rsdp_addr) and walks RSDP -> XSDT -> FADT -> DSDT,
 *      With more than one CPU in the MADT, starts the first AP with INIT/SIPI through the LAPIC;
 *      the AP runs a real-mode trampoline that prints its APIC id (from CPUID) on COM1,
 *   3. finds the virtio-mmio device in the DSDT (_HID "LNRO0005" with Memory32Fixed and
 *      Extended Interrupt resources),
 *   4. drives the virtio-serial device as Linux's virtio_console does, through the MMIO
 *      registers (notifications hit the VMM's ioeventfds): features, control queues,
 *      DEVICE_READY, DEVICE_ADD -> PORT_READY, PORT_NAME / PORT_OPEN from the host, then opens
 *      the port (PORT_OPEN 1), which the host side sees as the guest agent's port opening,
 *      The device's interrupt is taken for real: IDT, LAPIC and the IOAPIC redirection entry
 *      of the DSDT's GSI are programmed, and the driver sleeps in `hlt` until the VMM's irqfd
 *      edge arrives (vector 0x30),
 *   5. with "tinyguest.poweroff" on its command line, powers off through the FADT's sleep
 *      control register (ACPI S5); with "tinyguest.reboot", resets through the FADT's reset
 *      register; otherwise it keeps printing control messages it receives, echoes lines typed on
 *      COM1, and powers off when the power button's GED interrupt (ACPI0013 in the DSDT) comes.
 * Every step prints one "tinyguest: ..." line; failures print "tinyguest: FAIL ..." and stop.
 */
#include <stdint.h>
#include <stddef.h>

__attribute__((section(".text.entry"), naked, noreturn)) void _start(void)
{
    __asm__ volatile(
        "lea stack_top(%rip), %rsp\n"
        "mov %rsi, %rdi\n"
        "xor %esi, %esi\n"
        "call tiny_main\n"
        "1: cli; hlt; jmp 1b\n");
}

uint8_t stack[16384] __attribute__((aligned(16), used));
__asm__(".globl stack_top\n.set stack_top, stack + 16384\n");

/* ---- PVH entry (tinyguest-pvh.elf): the VMM enters pvh_start, named by the ELF note
   XEN_ELFNOTE_PHYS32_ENTRY, in 32-bit protected mode with flat segments and paging off, %ebx =
   hvm_start_info. The stub records CR0/EFER as found, identity-maps 0-4 GiB with 2 MiB pages,
   enters long mode on its own GDT and calls tiny_main(NULL, start_info). ---- */
uint8_t pvh_tables[6 * 4096] __attribute__((aligned(4096), used)); /* PML4, PDPT, 4 PDs */
volatile uint32_t pvh_entry_cr0, pvh_entry_efer, pvh_entry_cs;
__asm__(
    ".text\n"
    ".code32\n"
    ".globl pvh_start\n"
    "pvh_start:\n"
    "  cli\n"
    "  cld\n"
    "  mov %ebx, %esi\n"
    "  mov %cr0, %eax\n"
    "  mov %eax, pvh_entry_cr0\n"
    "  mov %cs, %eax\n"
    "  mov %eax, pvh_entry_cs\n"
    "  mov $0xc0000080, %ecx\n"
    "  rdmsr\n"
    "  mov %eax, pvh_entry_efer\n"
    "  mov $pvh_tables, %edi\n"
    "  xor %eax, %eax\n"
    "  mov $(6 * 1024), %ecx\n"
    "  rep stosl\n"
    "  movl $(pvh_tables + 0x1000 + 3), pvh_tables\n"
    "  mov $(pvh_tables + 0x1000), %edi\n"
    "  mov $(pvh_tables + 0x2000 + 3), %eax\n"
    "  mov $4, %ecx\n"
    "1: mov %eax, (%edi)\n"
    "  add $0x1000, %eax\n"
    "  add $8, %edi\n"
    "  loop 1b\n"
    "  mov $(pvh_tables + 0x2000), %edi\n"
    "  mov $0x83, %eax\n"                   /* present, writable, 2 MiB */
    "  mov $2048, %ecx\n"
    "2: mov %eax, (%edi)\n"
    "  add $0x200000, %eax\n"
    "  add $8, %edi\n"
    "  loop 2b\n"
    "  mov %cr4, %eax\n"
    "  or $0x20, %eax\n"                    /* PAE */
    "  mov %eax, %cr4\n"
    "  mov $pvh_tables, %eax\n"
    "  mov %eax, %cr3\n"
    "  mov $0xc0000080, %ecx\n"
    "  rdmsr\n"
    "  or $0x100, %eax\n"                   /* EFER.LME */
    "  wrmsr\n"
    "  lgdt pvh_gdtr\n"
    "  mov %cr0, %eax\n"
    "  or $0x80000001, %eax\n"              /* PG */
    "  mov %eax, %cr0\n"
    "  ljmp $0x08, $pvh_long\n"
    ".code64\n"
    "pvh_long:\n"
    "  mov $0x10, %eax\n"
    "  mov %eax, %ds\n"
    "  mov %eax, %es\n"
    "  mov %eax, %ss\n"
    "  mov %eax, %fs\n"
    "  mov %eax, %gs\n"
    "  lea stack_top(%rip), %rsp\n"
    "  mov %esi, %esi\n"
    "  xor %edi, %edi\n"
    "  call tiny_main\n"
    "3: cli; hlt; jmp 3b\n"
    ".section .rodata\n"
    ".balign 8\n"
    "pvh_gdt: .quad 0, 0x00af9b000000ffff, 0x00cf93000000ffff\n"
    "pvh_gdtr: .word 23\n"
    "  .long pvh_gdt\n"
#ifdef TINYGUEST_PVH
    /* The PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), the 32-bit entry. */
    ".section .note.Xen, \"a\", @note\n"
    ".balign 4\n"
    ".long 4, 4, 18\n"
    ".asciz \"Xen\"\n"
    ".long pvh_start\n"
#endif
    ".text\n");

/* ---- interrupts: IDT with a fatal stub for exceptions, a counting stub for vector 0x30 and a
   spurious stub for the rest; both non-fatal stubs send the LAPIC EOI. ---- */
#define VIRTIO_VECTOR 0x30
#define SERIAL_VECTOR 0x31
#define GED_VECTOR 0x32
volatile uint32_t irq_count, spurious_count, serial_irq_count, ged_irq_count;
__asm__(
    ".text\n"
    "irq_virtio:\n"
    "  push %rax\n"
    "  lock incl irq_count(%rip)\n"
    "  mov $0xfee000b0, %rax\n"
    "  movl $0, (%rax)\n"
    "  pop %rax\n"
    "  iretq\n"
    "irq_virtio_level:\n"              /* level-triggered (QEMU's microvm): ack the device first */
    "  push %rax; push %rcx; push %rdx; push %rsi; push %rdi\n"
    "  push %r8; push %r9; push %r10; push %r11\n"
    "  call virtio_level_irq\n"
    "  mov $0xfee000b0, %rax\n"
    "  movl $0, (%rax)\n"
    "  pop %r11; pop %r10; pop %r9; pop %r8\n"
    "  pop %rdi; pop %rsi; pop %rdx; pop %rcx; pop %rax\n"
    "  iretq\n"
    "irq_serial:\n"
    "  push %rax\n"
    "  lock incl serial_irq_count(%rip)\n"
    "  mov $0xfee000b0, %rax\n"
    "  movl $0, (%rax)\n"
    "  pop %rax\n"
    "  iretq\n"
    "irq_ged:\n"
    "  push %rax\n"
    "  lock incl ged_irq_count(%rip)\n"
    "  mov $0xfee000b0, %rax\n"
    "  movl $0, (%rax)\n"
    "  pop %rax\n"
    "  iretq\n"
    "irq_spurious:\n"
    "  push %rax\n"
    "  lock incl spurious_count(%rip)\n"
    "  mov $0xfee000b0, %rax\n"
    "  movl $0, (%rax)\n"
    "  pop %rax\n"
    "  iretq\n"
    "irq_fault:\n"
    "  call tiny_fault\n");
extern char irq_virtio[], irq_virtio_level[], irq_serial[], irq_ged[], irq_spurious[], irq_fault[];
struct idt_entry { uint16_t off0, sel; uint8_t ist, type; uint16_t off1; uint32_t off2, zero; };
static struct idt_entry idt[256] __attribute__((aligned(16)));

/* ---- port I/O and the UART ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

#define COM1 0x3f8
static void putc_(char c)
{
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
        ;
    outb(COM1, (uint8_t)c);
}
static void puts_(const char *s) { while (*s) { if (*s == '\n') putc_('\r'); putc_(*s++); } }
static void puthex(uint64_t v)
{
    puts_("0x");
    int started = 0;
    for (int i = 60; i >= 0; i -= 4) {
        int d = (v >> i) & 0xf;
        if (d || started || i == 0) { putc_("0123456789abcdef"[d]); started = 1; }
    }
}
static void putdec(uint64_t v)
{
    char b[21]; int n = 0;
    do { b[n++] = '0' + v % 10; v /= 10; } while (v);
    while (n) putc_(b[--n]);
}
static void halt(void) { for (;;) __asm__ volatile("cli; hlt"); }
static void fail(const char *what) { puts_("tinyguest: FAIL "); puts_(what); puts_("\n"); halt(); }
void tiny_fault(void);
void tiny_fault(void) { fail("CPU exception"); }

static void set_gate(int v, void *handler)
{
    uint64_t a = (uintptr_t)handler;
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[v] = (struct idt_entry){(uint16_t)a, cs, 0, 0x8e, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0};
}

static void mmio_w32(uint64_t a, uint32_t v) { *(volatile uint32_t *)(uintptr_t)a = v; }
static uint32_t mmio_r32(uint64_t a) { return *(volatile uint32_t *)(uintptr_t)a; }

/* `mode`: 0 = edge, active high; or IOAPIC_LEVEL / IOAPIC_LOW bits of the redirection entry. */
#define IOAPIC_LOW (1u << 13)
#define IOAPIC_LEVEL (1u << 15)
static void route_gsi_mode(uint64_t lapic, uint64_t ioapic, uint32_t gsi, uint32_t vector, uint32_t mode)
{
    uint32_t apic_id = mmio_r32(lapic + 0x20) >> 24;
    mmio_w32(ioapic, 0x10 + 2 * gsi + 1);            /* redirection entry, high: destination */
    mmio_w32(ioapic + 0x10, apic_id << 24);
    mmio_w32(ioapic, 0x10 + 2 * gsi);                /* low: fixed, physical, unmasked */
    mmio_w32(ioapic + 0x10, vector | mode);
}
static void route_gsi(uint64_t lapic, uint64_t ioapic, uint32_t gsi, uint32_t vector)
{
    route_gsi_mode(lapic, ioapic, gsi, vector, 0);
}

/* Routes `gsi` (edge, active high, or as `mode` says) to vector VIRTIO_VECTOR on this CPU through
   the IOAPIC. */
static void setup_interrupts(uint64_t lapic, uint64_t ioapic, uint32_t gsi, uint32_t mode)
{
    for (int v = 0; v < 256; v++) set_gate(v, v < 32 ? irq_fault : irq_spurious);
    set_gate(VIRTIO_VECTOR, mode & IOAPIC_LEVEL ? irq_virtio_level : irq_virtio);
    set_gate(SERIAL_VECTOR, irq_serial);
    set_gate(GED_VECTOR, irq_ged);
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr = {sizeof(idt) - 1, (uintptr_t)idt};
    __asm__ volatile("lidt %0" ::"m"(idtr));
    outb(0x21, 0xff); outb(0xa1, 0xff);              /* mask the 8259s */
    mmio_w32(lapic + 0xf0, 0x100 | 0xff);            /* LAPIC on, spurious vector 0xff */
    route_gsi_mode(lapic, ioapic, gsi, VIRTIO_VECTOR, mode);
}

/* ---- SMP: the AP's real-mode trampoline, copied to AP_TRAMPOLINE (SIPI vector 3). The AP starts
   there at CS:IP = 0x0300:0000 after INIT/SIPI, reads its APIC id with CPUID, prints a line on
   COM1, records "started | id" in ap_flag for the BSP and halts. ---- */
#define AP_TRAMPOLINE 0x3000
__asm__(
    ".text\n"
    ".code16\n"
    ".globl ap_tramp_start, ap_tramp_flag, ap_tramp_end\n"
    "ap_tramp_start:\n"
    "  cli\n"
    "  mov %cs, %ax\n"
    "  mov %ax, %ds\n"
    "  mov $1, %eax\n"
    "  cpuid\n"
    "  shr $24, %ebx\n"
    "  mov %bx, %cx\n"
    "  and $15, %bx\n"
    "  mov (ap_tramp_hex - ap_tramp_start)(%bx), %al\n"
    "  mov %al, (ap_tramp_digit - ap_tramp_start)\n"
    "  mov $(ap_tramp_msg - ap_tramp_start), %si\n"
    "1: lodsb\n"
    "  test %al, %al\n"
    "  jz 3f\n"
    "  mov %al, %bl\n"
    "  mov $0x3fd, %dx\n"
    "2: in %dx, %al\n"
    "  test $0x20, %al\n"
    "  jz 2b\n"
    "  mov $0x3f8, %dx\n"
    "  mov %bl, %al\n"
    "  out %al, %dx\n"
    "  jmp 1b\n"
    "3: or $0x100, %cx\n"
    "  mov %cx, (ap_tramp_flag - ap_tramp_start)\n"
    "4: cli\n"
    "  hlt\n"
    "  jmp 4b\n"
    "ap_tramp_hex: .ascii \"0123456789abcdef\"\n"
    "ap_tramp_msg: .ascii \"tinyguest: AP up in real mode, APIC id 0x\"\n"
    "ap_tramp_digit: .ascii \"?\"\n"
    "  .asciz \"\\r\\n\"\n"
    ".balign 4\n"
    "ap_tramp_flag: .long 0\n"
    "ap_tramp_end:\n"
    ".code64\n");
extern char ap_tramp_start[], ap_tramp_flag[], ap_tramp_end[];

/* ---- small helpers ---- */
static int memeq(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++) if (x[i] != y[i]) return 0;
    return 1;
}
static void *memset_(void *d, int c, size_t n) { uint8_t *p = d; while (n--) *p++ = (uint8_t)c; return d; }
void *memset(void *d, int c, size_t n) { return memset_(d, c, n); }
void *memcpy(void *d, const void *s, size_t n) { uint8_t *p = d; const uint8_t *q = s; while (n--) *p++ = *q++; return d; }
static uint8_t sum8(const uint8_t *p, size_t n) { uint8_t s = 0; while (n--) s += *p++; return s; }
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static int contains(const char *hay, const char *needle)
{
    for (; *hay; hay++) {
        const char *a = hay, *b = needle;
        while (*a && *b && *a == *b) { a++; b++; }
        if (!*b) return 1;
    }
    return 0;
}

/* ---- ACPI ---- */
static const uint8_t *find_rsdp(void)
{
    for (uintptr_t a = 0xe0000; a < 0x100000; a += 16) {
        const uint8_t *p = (const uint8_t *)a;
        if (memeq(p, "RSD PTR ", 8) && sum8(p, 20) == 0 && (p[15] < 2 || sum8(p, rd32(p + 20)) == 0))
            return p;
    }
    return 0;
}
static const uint8_t *table(uint64_t addr, const char *sig)
{
    const uint8_t *t = (const uint8_t *)(uintptr_t)addr;
    if (!memeq(t, sig, 4)) return 0;
    uint32_t len = rd32(t + 4);
    if (len < 36 || len > (1 << 20) || sum8(t, len) != 0) { puts_("tinyguest: bad checksum in "); puts_(sig); puts_("\n"); return 0; }
    return t;
}

struct mmio_dev { uint32_t base, len, gsi; int edge, low; };

/* Finds LNRO0005 in the DSDT and reads its Memory32Fixed (0x86) and Extended IRQ (0x89). */
static int find_virtio_mmio(const uint8_t *dsdt, struct mmio_dev *d)
{
    uint32_t len = rd32(dsdt + 4);
    for (uint32_t i = 36; i + 8 <= len; i++) {
        if (!memeq(dsdt + i, "LNRO0005", 8)) continue;
        int got_mem = 0, got_irq = 0;
        for (uint32_t j = i + 8; j + 12 <= len && j < i + 128; j++) {
            const uint8_t *r = dsdt + j;
            if (!got_mem && r[0] == 0x86 && rd16(r + 1) == 9) {
                d->base = rd32(r + 4); d->len = rd32(r + 8); got_mem = 1; j += 11;
            } else if (got_mem && r[0] == 0x89 && rd16(r + 1) >= 6 && r[4] >= 1) {
                d->edge = (r[3] >> 1) & 1; d->low = (r[3] >> 2) & 1; d->gsi = rd32(r + 5); got_irq = 1; break;
            }
        }
        if (got_mem && got_irq) return 1;
    }
    return 0;
}

/* Finds the Generic Event Device (ACPI0013, the power button's event source) and its GSI. */
static int find_ged(const uint8_t *dsdt, uint32_t *gsi)
{
    uint32_t len = rd32(dsdt + 4);
    for (uint32_t i = 36; i + 8 <= len; i++) {
        if (!memeq(dsdt + i, "ACPI0013", 8)) continue;
        for (uint32_t j = i + 8; j + 9 <= len && j < i + 64; j++) {
            const uint8_t *r = dsdt + j;
            if (r[0] == 0x89 && rd16(r + 1) >= 6 && r[4] >= 1) { *gsi = rd32(r + 5); return 1; }
        }
    }
    return 0;
}

/* ---- virtio-mmio ---- */
static volatile uint32_t *mmio;
static uint32_t rreg(uint32_t off) { return mmio[off / 4]; }
static void wreg(uint32_t off, uint32_t v) { mmio[off / 4] = v; }

/* The level-triggered interrupt: read and acknowledge the interrupt status (the line drops). */
static volatile uint32_t level_isr;
void virtio_level_irq(void);
void virtio_level_irq(void)
{
    uint32_t isr = rreg(0x60);
    if (isr) wreg(0x64, isr);
    level_isr |= isr;
    irq_count++;
}

#define QSZ 8
struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vq {
    struct desc d[QSZ] __attribute__((aligned(16)));
    struct { uint16_t flags, idx, ring[QSZ], used_event; } avail __attribute__((aligned(2)));
    struct { uint16_t flags, idx; struct { uint32_t id, len; } ring[QSZ]; uint16_t avail_event; } used __attribute__((aligned(4096)));
    uint16_t last_used;
    uint8_t buf[QSZ][64];
};
static struct vq queues[4] __attribute__((aligned(4096))); /* control rx, control tx, port1 rx, port1 tx */

static void setup_queue(uint32_t index, struct vq *q)
{
    memset(q, 0, sizeof(*q));
    wreg(0x30, index);
    if (rreg(0x44)) fail("queue already ready");
    uint32_t max = rreg(0x34);
    if (max < QSZ) fail("queue too small");
    wreg(0x38, QSZ);
    uint64_t d = (uintptr_t)q->d, a = (uintptr_t)&q->avail, u = (uintptr_t)&q->used;
    wreg(0x80, (uint32_t)d); wreg(0x84, (uint32_t)(d >> 32));
    wreg(0x90, (uint32_t)a); wreg(0x94, (uint32_t)(a >> 32));
    wreg(0xa0, (uint32_t)u); wreg(0xa4, (uint32_t)(u >> 32));
    wreg(0x44, 1);
}

static void post(struct vq *q, uint32_t qindex, int slot, uint32_t len, int writable)
{
    q->d[slot].addr = (uintptr_t)q->buf[slot];
    q->d[slot].len = len;
    q->d[slot].flags = writable ? 2 : 0;
    q->avail.ring[q->avail.idx % QSZ] = (uint16_t)slot;
    __asm__ volatile("mfence" ::: "memory");
    q->avail.idx++;
    __asm__ volatile("mfence" ::: "memory");
    wreg(0x50, qindex); /* QueueNotify: an ioeventfd in the VMM */
}

struct ctrl { uint32_t id; uint16_t event, value; };
enum { DEVICE_READY = 0, DEVICE_ADD = 1, DEVICE_REMOVE = 2, PORT_READY = 3, CONSOLE_PORT = 4,
       RESIZE = 5, PORT_OPEN = 6, PORT_NAME = 7 };
static const char *ev_name(uint16_t e)
{
    static const char *n[] = {"DEVICE_READY", "DEVICE_ADD", "DEVICE_REMOVE", "PORT_READY",
                              "CONSOLE_PORT", "RESIZE", "PORT_OPEN", "PORT_NAME"};
    return e < 8 ? n[e] : "?";
}

static int tx_slot;
static void send_ctrl(uint32_t id, uint16_t event, uint16_t value)
{
    struct vq *q = &queues[1];
    int slot = tx_slot++ % QSZ;
    struct ctrl c = {id, event, value};
    memcpy(q->buf[slot], &c, sizeof(c));
    puts_("tinyguest: -> "); puts_(ev_name(event)); puts_(" id="); putdec(id == 0xffffffffu ? 0 : id);
    puts_(" value="); putdec(value); puts_("\n");
    post(q, 3, slot, sizeof(c), 0);
}

/* Waits for the next control message from the device. */
static int use_irq;
static int recv_ctrl(struct ctrl *c, char *name, size_t name_max, uint64_t spins)
{
    struct vq *q = &queues[0];
    for (uint64_t i = 0; i < spins; i++) {
        __asm__ volatile("" ::: "memory");
        if (*(volatile uint16_t *)&q->used.idx == q->last_used && use_irq) {
            /* Sleep until the device's interrupt (sti's shadow covers hlt: no lost wakeup). */
            __asm__ volatile("sti; hlt; cli" ::: "memory");
            continue;
        }
        if (*(volatile uint16_t *)&q->used.idx != q->last_used) {
            uint32_t slot = q->used.ring[q->last_used % QSZ].id;
            uint32_t len = q->used.ring[q->last_used % QSZ].len;
            q->last_used++;
            if (slot >= QSZ || len < sizeof(*c)) fail("bad control buffer");
            memcpy(c, q->buf[slot], sizeof(*c));
            name[0] = 0;
            if (c->event == PORT_NAME) {
                size_t n = len - sizeof(*c);
                if (n >= name_max) n = name_max - 1;
                memcpy(name, q->buf[slot] + sizeof(*c), n);
                name[n] = 0;
            }
            post(q, 2, (int)slot, 64, 1); /* give the buffer back */
            return 1;
        }
        __asm__ volatile("pause");
    }
    return 0;
}

static void acpi_poweroff(const uint8_t *fadt)
{
    const uint8_t *gas = fadt + 244; /* SLEEP_CONTROL_REG */
    if (rd32(fadt + 4) < 256 || gas[0] != 1) fail("no sleep control register in the FADT");
    puts_("tinyguest: powering off through the sleep control register at ");
    puthex(rd64(gas + 4)); puts_("\n");
    outb((uint16_t)rd64(gas + 4), (5 << 2) | (1 << 5)); /* SLP_TYP = _S5_, SLP_EN */
    /* The VMM stops the vCPUs from its event loop, a moment after the write. */
    for (volatile uint64_t i = 0; i < 2000000000ull; i++) __asm__ volatile("pause");
    fail("still running long after S5");
}

static void acpi_reset(const uint8_t *fadt)
{
    const uint8_t *gas = fadt + 116; /* RESET_REG */
    if (!(rd32(fadt + 112) & (1 << 10)) || gas[0] != 1) fail("no reset register in the FADT");
    puts_("tinyguest: resetting through the reset register at "); puthex(rd64(gas + 4)); puts_("\n");
    outb((uint16_t)rd64(gas + 4), fadt[128]);
    for (volatile uint64_t i = 0; i < 2000000000ull; i++) __asm__ volatile("pause");
    fail("still running long after the reset");
}

/* Entered with boot params (64-bit boot protocol) or, through the PVH stub, with start_info. */
/* Starts the AP `id` with INIT and two SIPIs (vector AP_TRAMPOLINE >> 12) through the LAPIC's
   ICR, as a BIOS/Linux does, and waits until the trampoline reports in. */
static void start_ap(uint64_t lapic, uint32_t id)
{
    uint8_t *t = (uint8_t *)(uintptr_t)AP_TRAMPOLINE;
    volatile uint32_t *flag = (volatile uint32_t *)(t + (ap_tramp_flag - ap_tramp_start));
    memcpy(t, ap_tramp_start, (size_t)(ap_tramp_end - ap_tramp_start));
    *flag = 0;
    __asm__ volatile("mfence" ::: "memory");
    puts_("tinyguest: starting AP "); putdec(id); puts_(" (INIT, SIPI vector "); puthex(AP_TRAMPOLINE >> 12);
    puts_(")\n");
    const uint32_t icr[] = {0x4500, 0x8500, 0x4600 | (AP_TRAMPOLINE >> 12), 0x4600 | (AP_TRAMPOLINE >> 12)};
    for (int i = 0; i < 4 && !*flag; i++) {
        for (int w = 0; w < 100000 && (mmio_r32(lapic + 0x300) & 0x1000); w++) __asm__ volatile("pause");
        mmio_w32(lapic + 0x310, id << 24);
        mmio_w32(lapic + 0x300, icr[i]);
        for (volatile int w = 0; w < 2000; w++) __asm__ volatile("pause");
    }
    for (uint64_t i = 0; i < 200000000ull && !*flag; i++) __asm__ volatile("pause");
    if (!*flag) fail("the AP did not start");
    puts_("tinyguest: AP with APIC id "); putdec(*flag & 0xff); puts_(" started\n");
}

void tiny_main(const uint8_t *boot_params, const uint8_t *start_info);
void tiny_main(const uint8_t *boot_params, const uint8_t *start_info)
{
    /* Memory is not cleared on a reset: start from clean driver state. */
    memset(queues, 0, sizeof(queues));
    tx_slot = 0;
    use_irq = 0;
    irq_count = spurious_count = serial_irq_count = ged_irq_count = 0;

    uint64_t cr0, cr4, efer_lo;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0xc0000080));
    efer_lo = lo;
    puts_("tinyguest: hello from 64-bit long mode (cr0="); puthex(cr0); puts_(" cr4="); puthex(cr4);
    puts_(" efer="); puthex(efer_lo); puts_(")\n");
    if (!(efer_lo & 0x400)) fail("not in long mode");

    const char *cmdline;
    uint32_t e820_n;
    uint64_t ram = 0, bp_rsdp;
    if (start_info) {
        puts_("tinyguest: PVH entry: cs="); puthex(pvh_entry_cs); puts_(" cr0="); puthex(pvh_entry_cr0);
        puts_(" efer="); puthex(pvh_entry_efer); puts_(", start_info at "); puthex((uintptr_t)start_info);
        puts_("\n");
        if ((pvh_entry_cr0 & 0x80000001) != 1) fail("PVH entry not in protected mode with paging off");
        if (rd32(start_info) != 0x336ec578) fail("bad hvm_start_info magic");
        puts_("tinyguest: hvm_start_info version "); putdec(rd32(start_info + 4)); puts_(", ");
        putdec(rd32(start_info + 12)); puts_(" modules");
        if (rd32(start_info + 12)) {
            const uint8_t *mod = (const uint8_t *)(uintptr_t)rd64(start_info + 16);
            puts_(" (module 0: "); putdec(rd64(mod + 8)); puts_(" bytes at "); puthex(rd64(mod)); puts_(")");
        }
        puts_("\n");
        cmdline = (const char *)(uintptr_t)rd64(start_info + 24);
        e820_n = rd32(start_info + 48);
        const uint8_t *map = (const uint8_t *)(uintptr_t)rd64(start_info + 40);
        for (uint32_t i = 0; map && i < e820_n && i < 128; i++) {
            const uint8_t *e = map + 24 * i;
            if (rd32(e + 16) == 1) ram += rd64(e + 8);
        }
        bp_rsdp = rd64(start_info + 32);
    } else {
        cmdline = (const char *)(uintptr_t)rd32(boot_params + 0x228);
        e820_n = boot_params[0x1e8];
        for (uint32_t i = 0; i < e820_n && i < 128; i++) {
            const uint8_t *e = boot_params + 0x2d0 + 20 * i;
            if (rd32(e + 16) == 1) ram += rd64(e + 8);
        }
        bp_rsdp = rd64(boot_params + 0x70);
    }
    puts_("tinyguest: command line: "); puts_(cmdline ? cmdline : "(none)"); puts_("\n");
    puts_("tinyguest: e820: "); putdec(e820_n); puts_(" entries, "); putdec(ram >> 20); puts_(" MiB RAM\n");

    const uint8_t *rsdp = find_rsdp();
    if (!rsdp) fail("no RSDP in 0xe0000-0xfffff");
    puts_("tinyguest: RSDP at "); puthex((uintptr_t)rsdp); puts_(start_info ? " (start_info says " : " (boot params say ");
    puthex(bp_rsdp); puts_(")\n");
    if (bp_rsdp != (uintptr_t)rsdp) fail("the boot protocol's RSDP address disagrees with the scan");
    const uint8_t *xsdt = table(rd64(rsdp + 24), "XSDT");
    if (!xsdt) fail("no XSDT");
    const uint8_t *fadt = 0, *madt = 0;
    for (uint32_t off = 36; off + 8 <= rd32(xsdt + 4); off += 8) {
        uint64_t a = rd64(xsdt + off);
        if (!fadt) fadt = table(a, "FACP");
        if (!madt) madt = table(a, "APIC");
    }
    if (!fadt) fail("no FADT in the XSDT");
    if (!madt) fail("no MADT in the XSDT");
    int cpus = 0;
    for (uint32_t off = 44; off + 2 <= rd32(madt + 4); off += madt[off + 1]) {
        if (madt[off + 1] == 0) fail("bad MADT entry");
        if (madt[off] == 0 && (rd32(madt + off + 4) & 1)) cpus++;
    }
    uint64_t lapic = rd32(madt + 36), ioapic = 0;
    for (uint32_t off = 44; off + 2 <= rd32(madt + 4); off += madt[off + 1])
        if (madt[off] == 1 && !ioapic) ioapic = rd32(madt + off + 4);
    if (!ioapic) fail("no IOAPIC in the MADT");
    uint32_t ap_id = 0xffffffffu;
    for (uint32_t off = 44; off + 2 <= rd32(madt + 4); off += madt[off + 1])
        if (madt[off] == 0 && (rd32(madt + off + 4) & 1) && madt[off + 3] != mmio_r32(lapic + 0x20) >> 24
            && ap_id == 0xffffffffu)
            ap_id = madt[off + 3];
    const uint8_t *dsdt = table(rd64(fadt + 140) ? rd64(fadt + 140) : rd32(fadt + 40), "DSDT");
    if (!dsdt) fail("no DSDT");
    puts_("tinyguest: ACPI: XSDT "); puthex((uintptr_t)xsdt); puts_(", FADT "); puthex((uintptr_t)fadt);
    puts_(", MADT "); puthex((uintptr_t)madt); puts_(" ("); putdec(cpus); puts_(" CPUs), DSDT ");
    puthex((uintptr_t)dsdt); puts_("\n");

    struct mmio_dev dev;
    if (!find_virtio_mmio(dsdt, &dev)) fail("no LNRO0005 device with resources in the DSDT");
    puts_("tinyguest: virtio-mmio (LNRO0005) at "); puthex(dev.base); puts_(" size "); puthex(dev.len);
    puts_(" gsi "); putdec(dev.gsi); puts_(dev.edge ? " edge" : " level"); puts_(dev.low ? " low\n" : "\n");

    setup_interrupts(lapic, ioapic, dev.gsi, (dev.edge ? 0 : IOAPIC_LEVEL) | (dev.low ? IOAPIC_LOW : 0));
    puts_("tinyguest: IOAPIC "); puthex(ioapic); puts_(" pin "); putdec(dev.gsi); puts_(" -> vector ");
    puthex(VIRTIO_VECTOR); puts_(", LAPIC "); puthex(lapic); puts_("\n");
    use_irq = 1;
    if (ap_id != 0xffffffffu) start_ap(lapic, ap_id);

    mmio = (volatile uint32_t *)(uintptr_t)dev.base;
    if (rreg(0) != 0x74726976) fail("bad virtio-mmio magic");
    if (rreg(4) != 2) fail("not a virtio-mmio version 2 device");
    if (rreg(8) != 3) fail("not a virtio console");
    wreg(0x70, 0);
    wreg(0x70, 1);
    wreg(0x70, 1 | 2);
    wreg(0x14, 0); uint32_t f0 = rreg(0x10);
    wreg(0x14, 1); uint32_t f1 = rreg(0x10);
    if (!(f0 & 2)) fail("no MULTIPORT feature");
    if (!(f1 & 1)) fail("no VERSION_1 feature");
    wreg(0x24, 0); wreg(0x20, 2);   /* MULTIPORT */
    wreg(0x24, 1); wreg(0x20, 1);   /* VERSION_1 */
    wreg(0x70, 1 | 2 | 8);
    if (!(rreg(0x70) & 8)) fail("FEATURES_OK refused");
    uint32_t max_ports = rreg(0x100 + 4);
    puts_("tinyguest: virtio-serial: features "); puthex((uint64_t)f1 << 32 | f0); puts_(", max_nr_ports ");
    putdec(max_ports); puts_("\n");
    setup_queue(2, &queues[0]);
    setup_queue(3, &queues[1]);
    setup_queue(4, &queues[2]);
    setup_queue(5, &queues[3]);
    wreg(0x70, 1 | 2 | 8 | 4);
    if (rreg(0x70) & 0x40) fail("device needs reset");
    for (int i = 0; i < QSZ; i++) {
        struct vq *q = &queues[0];
        q->d[i].addr = (uintptr_t)q->buf[i]; q->d[i].len = 64; q->d[i].flags = 2;
        q->avail.ring[i] = (uint16_t)i;
    }
    __asm__ volatile("mfence" ::: "memory");
    queues[0].avail.idx = QSZ;
    wreg(0x50, 2);
    puts_("tinyguest: driver ready, control queues set up\n");
    send_ctrl(0xffffffffu, DEVICE_READY, 1);

    struct ctrl c;
    char name[64];
    int opened = 0;
    uint32_t port = 0;
    while (!opened) {
        if (!recv_ctrl(&c, name, sizeof(name), 2000000000ull)) fail("no control message from the device");
        puts_("tinyguest: <- "); puts_(ev_name(c.event)); puts_(" id="); putdec(c.id); puts_(" value="); putdec(c.value);
        if (c.event == PORT_NAME) { puts_(" name="); puts_(name); }
        puts_("\n");
        if (c.event == DEVICE_ADD) {
            port = c.id;
            send_ctrl(port, PORT_READY, 1);
        } else if (c.event == PORT_NAME) {
            /* The name arrives after PORT_READY; a host-connected PORT_OPEN may follow. Open the
               port now, as a guest agent does when it starts. */
            send_ctrl(port, PORT_OPEN, 1);
            opened = 1;
        }
    }
    /* The device raised its line for the used buffers: even if every message was already there
       when we looked, the edge is pending in the LAPIC and is taken as soon as IF is set. */
    puts_("tinyguest: waiting for the device interrupt\n");
    while (irq_count == 0) __asm__ volatile("sti; hlt; cli" ::: "memory");
    uint32_t isr = dev.edge ? rreg(0x60) : level_isr;
    puts_("tinyguest: interrupt status "); puthex(isr); puts_(", "); putdec(irq_count);
    puts_(" interrupts on vector 0x30, "); putdec(spurious_count); puts_(" others\n");
    if (dev.edge) wreg(0x64, isr);
    puts_("tinyguest: port "); putdec(port); puts_(" open\n");

    if (cmdline && (contains(cmdline, "tinyguest.poweroff") || contains(cmdline, "tinyguest.reboot"))) {
        /* Give the host a moment to see the open before the machine goes away. */
        for (volatile uint64_t i = 0; i < 200000; i++) __asm__ volatile("pause");
        if (contains(cmdline, "tinyguest.poweroff")) acpi_poweroff(fadt);
        acpi_reset(fadt);
    }
    /* The power button: the GED's interrupt; the guest answers it by powering off (S5), as
       Linux + acpid do. */
    uint32_t ged_gsi;
    if (!find_ged(dsdt, &ged_gsi)) fail("no ACPI0013 (GED) with an interrupt in the DSDT");
    route_gsi(lapic, ioapic, ged_gsi, GED_VECTOR);
    puts_("tinyguest: power button: GED (ACPI0013) gsi "); putdec(ged_gsi); puts_("\n");
    /* Serial input: COM1's receive interrupt (the MADT's ISA IRQ 4, identity-mapped) to
       SERIAL_VECTOR; each input line is echoed back. */
    route_gsi(lapic, ioapic, 4, SERIAL_VECTOR);
    outb(COM1 + 1, 0x01);
    puts_("tinyguest: serial input on\n");
    char line[80];
    uint32_t n = 0;
    for (;;) {
        if (ged_irq_count) {
            puts_("tinyguest: power button pressed\n");
            acpi_poweroff(fadt);
        }
        while (inb(COM1 + 5) & 1) {
            char ch = (char)inb(COM1);
            if (ch == '\r' || ch == '\n') {
                line[n] = 0;
                if (n) { puts_("tinyguest: serial line '"); puts_(line); puts_("' ("); putdec(serial_irq_count); puts_(" serial interrupts)\n"); }
                n = 0;
            } else if (n + 1 < sizeof(line)) {
                line[n++] = ch;
            }
        }
        /* At most one sleep: returns on the next interrupt of either device. */
        if (recv_ctrl(&c, name, sizeof(name), 1)) {
            puts_("tinyguest: <- "); puts_(ev_name(c.event)); puts_(" id="); putdec(c.id);
            puts_(" value="); putdec(c.value); puts_("\n");
        }
    }
}
