/* A freestanding x86-64 test guest for ferro's KVM backend. It reads its
 * command line from the boot protocol it was entered with (Linux 64-bit:
 * boot_params in RSI; PVH: hvm_start_info in EBX) and runs the checks named
 * there (test=...), reporting on COM1 and ending with a poweroff (port
 * 0x604 <- 0x2000). Built by crates/ferro/tests/kvm_guests.rs. */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(p)); }
static inline u16 inw(u16 p) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }

static void putc(char c) {
    while (!(inb(0x3fd) & 0x20)) {}
    outb(0x3f8, c);
}
static void puts(const char *s) { while (*s) putc(*s++); }
static void puthex(u64 v) {
    puts("0x");
    for (int i = 60; i >= 0; i -= 4) putc("0123456789abcdef"[(v >> i) & 15]);
}
static void putdec(u64 v) {
    char b[24]; int n = 0;
    do { b[n++] = '0' + v % 10; v /= 10; } while (v);
    while (n) putc(b[--n]);
}
static __attribute__((noreturn)) void poweroff(void) {
    outw(0x604, 0x2000);
    outb(0xf4, 0); /* QEMU's isa-debug-exit, for the benchmark's peer */
    for (;;) __asm__ volatile("cli; hlt");
}
static int starts(const char *s, const char *p) {
    while (*p) if (*s++ != *p++) return 0;
    return 1;
}
static int has_word(const char *cmd, const char *w) {
    const char *s = cmd;
    while (*s) {
        if ((s == cmd || s[-1] == ' ') && starts(s, w)) {
            const char *e = s; const char *q = w;
            while (*q) { e++; q++; }
            if (*e == 0 || *e == ' ') return 1;
        }
        s++;
    }
    return 0;
}
static u64 fnv(u64 a, u64 n) {
    u64 h = 0xcbf29ce484222325ull;
    for (u64 i = 0; i < n; i++) { h ^= *(volatile u8 *)(a + i); h *= 0x100000001b3ull; }
    return h;
}

__attribute__((used)) u64 boot_params, start_info;

/* ---- ACPI: find the RSDP in the BIOS area, walk the XSDT with checksums,
 * read the FADT's PM1 blocks and the DSDT's \_S5 sleep type, and count the
 * MADT's processors. */
static u64 fadt, dsdt, madt;
static u8 sum(u64 a, u64 n) { u8 s = 0; for (u64 i = 0; i < n; i++) s += *(volatile u8 *)(a + i); return s; }
static u16 rd16(u64 a) { return *(volatile u16 *)a; }
static int acpi_find(void) {
    u64 rsdp = 0;
    for (u64 a = 0xe0000; a < 0x100000; a += 16)
        if (rd32(a) == 0x20445352 && rd32(a + 4) == 0x20525450 && sum(a, 20) == 0) { rsdp = a; break; }
    if (!rsdp) { puts("ACPI no RSDP\n"); return 0; }
    if (*(volatile u8 *)(rsdp + 15) < 2 || sum(rsdp, 36)) { puts("ACPI bad RSDP\n"); return 0; }
    u64 xsdt = *(volatile u64 *)(rsdp + 24);
    u32 len = rd32(xsdt + 4);
    if (rd32(xsdt) != 0x54445358 || sum(xsdt, len)) { puts("ACPI bad XSDT\n"); return 0; }
    for (u64 p = xsdt + 36; p < xsdt + len; p += 8) {
        u64 t = *(volatile u64 *)p;
        if (sum(t, rd32(t + 4))) { puts("ACPI bad checksum\n"); return 0; }
        if (rd32(t) == 0x50434146) fadt = t; /* FACP */
        if (rd32(t) == 0x43495041) madt = t; /* APIC */
    }
    if (!fadt || !madt) { puts("ACPI no FADT/MADT\n"); return 0; }
    dsdt = *(volatile u64 *)(fadt + 140);
    if (rd32(dsdt) != 0x54445344 || sum(dsdt, rd32(dsdt + 4))) { puts("ACPI bad DSDT\n"); return 0; }
    return 1;
}
/* The \_S5 package's first element (SLP_TYPa), or -1. */
static int acpi_s5(void) {
    u32 len = rd32(dsdt + 4);
    for (u64 a = dsdt + 36; a + 8 < dsdt + len; a++) {
        if (*(volatile u8 *)a == 0x08 && rd32(a + 1) == 0x5f35535f /* "_S5_" */ &&
            *(volatile u8 *)(a + 5) == 0x12) {
            u64 e = a + 8; /* NameOp, name, PackageOp, 1-byte PkgLength, NumElements */
            u8 op = *(volatile u8 *)e;
            if (op == 0x0a) return *(volatile u8 *)(e + 1);
            if (op == 0x00 || op == 0x01) return op;
        }
    }
    return -1;
}
static __attribute__((noreturn)) void acpi_poweroff(void) {
    int typ = acpi_s5();
    u16 cnt = (u16)rd32(fadt + 64);
    puts("ACPI-S5="); putdec(typ); puts(" PM1A_CNT="); puthex(cnt); putc('\n');
    outw(cnt, (u16)((typ << 10) | (1 << 13)));
    puts("ACPI-S5 failed\n");
    for (;;) __asm__ volatile("cli; hlt");
}
static void acpi(void) {
    if (!acpi_find()) return;
    int cpus = 0;
    for (u64 e = madt + 44; e < madt + rd32(madt + 4); e += *(volatile u8 *)(e + 1))
        if (*(volatile u8 *)e == 0 && (rd32(e + 4) & 1)) cpus++;
    puts("ACPI-CPUS="); putdec(cpus); putc('\n');
    puts("ACPI-SCI="); putdec(rd16(fadt + 46)); putc('\n');
}
/* Wait for the fixed power button (PM1_STS.PWRBTN), then S5. */
static void powerbtn(void) {
    if (!acpi_find()) return;
    u16 evt = (u16)rd32(fadt + 56);
    outw(evt + 2, 1 << 8); /* PM1_EN.PWRBTN_EN */
    puts("PWRBTN-ARMED\n");
    while (!(inw(evt) & (1 << 8))) {}
    outw(evt, 1 << 8); /* write 1 to clear */
    puts("PWRBTN-PRESSED\n");
    acpi_poweroff();
}

/* ---- SMP: count CPUs in the MP table, start the APs with INIT/SIPI; each
 * AP sets its APIC ID bit at 0x5000 from a real-mode trampoline. */
extern char tramp_start[], tramp_end[];
__asm__(".code16\n"
        "tramp_start:\n"
        "  cli\n"
        "  xor %ax, %ax\n"
        "  mov %ax, %ds\n"
        "  mov $1, %eax\n"
        "  cpuid\n"
        "  shr $24, %ebx\n"
        "  lock btsl %ebx, 0x5000\n"
        "1: hlt\n"
        "  jmp 1b\n"
        "tramp_end:\n"
        ".code64\n");

static void delay(u64 n) { for (volatile u64 i = 0; i < n; i++) {} }

static void smp(void) {
    u64 mp = 0;
    for (u64 a = 0x9fc00; a < 0xa0000; a += 16)
        if (rd32(a) == 0x5f504d5f) { mp = a; break; } /* "_MP_" */
    if (!mp) { puts("SMP no MP table\n"); return; }
    u64 cfg = rd32(mp + 4);
    u32 entries = *(volatile u16 *)(cfg + 34);
    u64 p = cfg + 44;
    u32 cpus = 0;
    for (u32 i = 0; i < entries; i++) {
        u8 t = *(volatile u8 *)p;
        if (t == 0) { cpus++; p += 20; } else p += 8;
    }
    puts("MPCPUS="); putdec(cpus); putc('\n');
    u32 eax = 1, ebx, ecx = 0, edx;
    __asm__ volatile("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
    u32 me = ebx >> 24;
    volatile u64 *bits = (volatile u64 *)0x5000;
    *bits = 1ull << me;
    u8 *dst = (u8 *)0x10000;
    for (char *s = tramp_start; s < tramp_end; s++) *dst++ = *s;
    wr32(0xfee00310, 0);
    wr32(0xfee00300, 0x000c4500); /* INIT, all but self */
    delay(1000);
    wr32(0xfee00300, 0x000c4610); /* SIPI vector 0x10 -> 0x10000 */
    u64 want = cpus >= 64 ? ~0ull : (1ull << cpus) - 1;
    for (u64 spin = 0; spin < 200000000ull && *bits != want; spin++) {
        if (spin == 100000) wr32(0xfee00300, 0x000c4610); /* second SIPI */
    }
    for (u32 i = 0; i < 64; i++)
        if (*bits & (1ull << i)) { puts("CPU "); putdec(i); puts(" reported\n"); }
    puts(*bits == want ? "SMP OK\n" : "SMP MISSING\n");
}

/* ---- virtio-blk over virtio-mmio (version 2), polled. */
#define VB 0xd0000000ull
struct desc { u64 addr; u32 len; u16 flags; u16 next; };
#define QDESC 0x200000ull
#define QAVAIL 0x201000ull
#define QUSED 0x202000ull
#define REQ 0x203000ull
#define DATA 0x204000ull
static u16 avail_idx;

static int blk_io(u32 type, u64 sector) {
    volatile struct desc *d = (volatile struct desc *)QDESC;
    volatile u32 *hdr = (volatile u32 *)REQ;
    hdr[0] = type; hdr[1] = 0; *(volatile u64 *)(REQ + 8) = sector;
    *(volatile u8 *)(REQ + 16) = 0xff;
    d[0].addr = REQ; d[0].len = 16; d[0].flags = 1; d[0].next = 1;
    d[1].addr = DATA; d[1].len = 512; d[1].flags = 1 | (type == 0 ? 2 : 0); d[1].next = 2;
    d[2].addr = REQ + 16; d[2].len = 1; d[2].flags = 2; d[2].next = 0;
    volatile u16 *avail = (volatile u16 *)QAVAIL;
    avail[2 + (avail_idx % 8)] = 0;
    __asm__ volatile("mfence" ::: "memory");
    avail[1] = ++avail_idx;
    __asm__ volatile("mfence" ::: "memory");
    wr32(VB + 0x50, 0);
    volatile u16 *used = (volatile u16 *)QUSED;
    for (u64 spin = 0; used[1] != avail_idx; spin++)
        if (spin > 100000000ull) { puts("BLK timeout\n"); return -1; }
    u32 isr = rd32(VB + 0x60);
    wr32(VB + 0x64, isr);
    puts("BLK isr="); putdec(isr); putc('\n');
    return *(volatile u8 *)(REQ + 16);
}

static void blk(void) {
    if (rd32(VB) != 0x74726976 || rd32(VB + 4) != 2 || rd32(VB + 8) != 2) {
        puts("BLK no device\n");
        return;
    }
    wr32(VB + 0x70, 0);
    wr32(VB + 0x70, 1);
    wr32(VB + 0x70, 3);
    wr32(VB + 0x24, 1); wr32(VB + 0x20, 1); /* VIRTIO_F_VERSION_1 */
    wr32(VB + 0x24, 0); wr32(VB + 0x20, 0);
    wr32(VB + 0x70, 11);
    if (!(rd32(VB + 0x70) & 8)) { puts("BLK features refused\n"); return; }
    u64 cap = rd32(VB + 0x100) | ((u64)rd32(VB + 0x104) << 32);
    puts("BLK capacity="); putdec(cap); putc('\n');
    wr32(VB + 0x30, 0);
    if (rd32(VB + 0x34) < 8) { puts("BLK queue too small\n"); return; }
    wr32(VB + 0x38, 8);
    wr32(VB + 0x80, (u32)QDESC); wr32(VB + 0x84, 0);
    wr32(VB + 0x90, (u32)QAVAIL); wr32(VB + 0x94, 0);
    wr32(VB + 0xa0, (u32)QUSED); wr32(VB + 0xa4, 0);
    wr32(VB + 0x44, 1);
    wr32(VB + 0x70, 15);
    /* read sector 0 */
    if (blk_io(0, 0) != 0) { puts("BLK read failed\n"); return; }
    puts("BLK0=");
    for (int i = 0; i < 16; i++) { char c = *(volatile char *)(DATA + i); putc(c >= 32 && c < 127 ? c : '.'); }
    putc('\n');
    /* write sector 1 */
    const char *msg = "written by the KVM test guest";
    for (int i = 0; i < 512; i++) *(volatile u8 *)(DATA + i) = 0;
    for (int i = 0; msg[i]; i++) *(volatile u8 *)(DATA + i) = msg[i];
    if (blk_io(1, 1) != 0) { puts("BLK write failed\n"); return; }
    /* read it back */
    for (int i = 0; i < 512; i++) *(volatile u8 *)(DATA + i) = 0;
    if (blk_io(0, 1) != 0) { puts("BLK reread failed\n"); return; }
    puts("BLK1=");
    for (int i = 0; msg[i]; i++) putc(*(volatile char *)(DATA + i));
    putc('\n');
    puts("BLK OK\n");
}

/* ---- Interrupts: IDT vector 0x30 <- IOAPIC pin 5 (virtio slot 0, level,
 * active high) -> LAPIC of CPU 0. The handler acks the device (lowering its
 * line) and the LAPIC. */
__attribute__((used)) volatile u64 irq_count, irq_empty;
__attribute__((used)) void irq_body(void) {
    u32 isr = rd32(VB + 0x60);
    wr32(VB + 0x64, isr);
    irq_count++;
    if (!(isr & 1)) irq_empty++;
    wr32(0xfee000b0, 0); /* EOI */
}
extern char irq_entry[];
__asm__(".text\n"
        "irq_entry:\n"
        "  push %rax; push %rcx; push %rdx; push %rsi; push %rdi\n"
        "  push %r8; push %r9; push %r10; push %r11\n"
        "  call irq_body\n"
        "  pop %r11; pop %r10; pop %r9; pop %r8\n"
        "  pop %rdi; pop %rsi; pop %rdx; pop %rcx; pop %rax\n"
        "  iretq\n");
__attribute__((aligned(16))) u64 idt[2 * 256];

static void ioapic_write(u32 reg, u32 v) { wr32(0xfec00000, reg); wr32(0xfec00010, v); }

static void irq_setup(u32 pin) {
    u64 h = (u64)irq_entry;
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[2 * 0x30] = (h & 0xffff) | ((u64)cs << 16) | (0x8eull << 40) | ((h >> 16) << 48);
    idt[2 * 0x30 + 1] = h >> 32;
    struct { u16 lim; u64 base; } __attribute__((packed)) d = {sizeof idt - 1, (u64)idt};
    __asm__ volatile("lidt %0" ::"m"(d));
    /* The 8259s see the same lines (KVM routes GSI 0-15 to both); mask
     * them so only the IOAPIC delivers. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    wr32(0xfee000f0, 0x1ff); /* LAPIC on, spurious vector 0xff */
    wr32(0xfee00080, 0);     /* TPR */
    ioapic_write(0x10 + 2 * pin + 1, 0);              /* to APIC ID 0 */
    ioapic_write(0x10 + 2 * pin, 0x30 | (1u << 15));  /* level, high, unmasked */
    __asm__ volatile("sti");
}

void main64(void) {
    const char *cmd;
    u64 initrd = 0, initrd_size = 0;
    if (start_info) {
        puts("ENTRY=pvh\n");
        cmd = (const char *)*(volatile u64 *)(start_info + 24);
        if (rd32(start_info + 12) >= 1) {
            u64 m = *(volatile u64 *)(start_info + 16);
            initrd = *(volatile u64 *)m;
            initrd_size = *(volatile u64 *)(m + 8);
        }
    } else {
        puts("ENTRY=linux64\n");
        cmd = (const char *)(u64)rd32(boot_params + 0x228);
        initrd = rd32(boot_params + 0x218);
        initrd_size = rd32(boot_params + 0x21c);
        puts("E820="); putdec(*(volatile u8 *)(boot_params + 0x1e8)); putc('\n');
    }
    puts("CMDLINE="); puts(cmd); putc('\n');
    if (initrd_size) {
        puts("INITRD="); puthex(initrd); putc(','); putdec(initrd_size);
        putc(','); puthex(fnv(initrd, initrd_size)); putc('\n');
    }
    if (has_word(cmd, "test=smp")) smp();
    if (has_word(cmd, "test=acpi")) { acpi(); acpi_poweroff(); }
    if (has_word(cmd, "test=powerbtn")) powerbtn();
    if (has_word(cmd, "test=irq")) {
        irq_setup(5);
        blk();
        for (u64 spin = 0; irq_count < 3 && spin < 100000000ull; spin++) {}
        __asm__ volatile("cli");
        puts("IRQS="); putdec(irq_count); putc('\n');
        puts("IRQS-EMPTY="); putdec(irq_empty); putc('\n');
    }
    if (has_word(cmd, "test=blk")) blk();
    if (has_word(cmd, "test=reset")) {
        puts("RESET\n");
        outb(0x64, 0xfe);
        for (;;) __asm__ volatile("cli; hlt");
    }
    if (has_word(cmd, "test=triple")) {
        puts("TRIPLE\n");
        struct { u16 lim; u64 base; } __attribute__((packed)) idt = {0, 0};
        __asm__ volatile("lidt %0; ud2" ::"m"(idt));
    }
    if (has_word(cmd, "test=internal")) {
        /* An SSE compare against MMIO (no device there): KVM's instruction
         * emulator has no PCMPEQB, so it gives up with
         * KVM_EXIT_INTERNAL_ERROR (emulation failed). */
        puts("INTERNAL\n");
        u64 cr4;
        __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
        __asm__ volatile("mov %0, %%cr4" ::"r"(cr4 | (1 << 9))); /* OSFXSR */
        __asm__ volatile("pcmpeqb (%0), %%xmm0" ::"r"(0xd0f00000ull)); /* never returns */
        puts("NOT-REACHED\n");
    }
    if (has_word(cmd, "test=bench")) {
        /* Exit round trips, timed by the host from the markers' arrival. */
        puts("PIO-START\n");
        for (int i = 0; i < 20000; i++) outb(0x3ff, (u8)i); /* COM1 scratch */
        puts("PIO-END\n");
        for (int i = 0; i < 20000; i++) (void)rd32(0xd0000800); /* unclaimed MMIO */
        puts("MMIO-END\n");
    }
    if (has_word(cmd, "test=idle")) {
        puts("IDLE\n");
        for (;;) __asm__ volatile("cli; hlt");
    }
    if (has_word(cmd, "test=spin")) {
        volatile u64 *ctr = (volatile u64 *)0x6f00;
        puts("SPIN\n");
        for (;;) (*ctr)++;
    }
    puts("DONE\n");
    poweroff();
}

__attribute__((used, aligned(16))) u8 stack[16384];

__attribute__((section(".text.entry"), naked, noreturn)) void _start(void) {
    __asm__ volatile(
        "mov %%rsi, boot_params(%%rip)\n"
        "lea stack+16384(%%rip), %%rsp\n"
        "call main64\n"
        "1: hlt\n jmp 1b\n" ::: "memory");
}

#ifdef PVH
/* PVH: 32-bit protected mode, paging off, EBX = hvm_start_info. Build our
 * own GDT and identity page tables (low 4 GiB: RAM and the LAPIC) and enter long mode, without
 * relying on anything the VMM left in memory. */
__attribute__((used, aligned(4096))) u64 pvh_pml4[512], pvh_pdpt[512], pvh_pd[4 * 512];
__attribute__((used, aligned(16))) u64 pvh_gdt[3] = {
    0, 0x00af9a000000ffffull, 0x00cf92000000ffffull};
__attribute__((used)) struct { u16 lim; u32 base; } __attribute__((packed))
    pvh_gdtr = {sizeof pvh_gdt - 1, 0};
__asm__(".code32\n"
        ".globl pvh_start\n"
        "pvh_start:\n"
        "  mov %ebx, start_info\n"
        "  movl $pvh_gdt, pvh_gdtr+2\n"
        "  lgdt pvh_gdtr\n"
        "  mov $pvh_pdpt, %eax\n"
        "  or $3, %eax\n"
        "  mov %eax, pvh_pml4\n"
        "  xor %ecx, %ecx\n"
        "3:\n"
        "  mov %ecx, %eax\n"
        "  shl $12, %eax\n"
        "  add $pvh_pd, %eax\n"
        "  or $3, %eax\n"
        "  mov %eax, pvh_pdpt(,%ecx,8)\n"
        "  inc %ecx\n"
        "  cmp $4, %ecx\n"
        "  jb 3b\n"
        "  xor %ecx, %ecx\n"
        "1:\n"
        "  mov %ecx, %eax\n"
        "  shl $21, %eax\n"
        "  or $0x83, %eax\n"
        "  mov %eax, pvh_pd(,%ecx,8)\n"
        "  inc %ecx\n"
        "  cmp $2048, %ecx\n"
        "  jb 1b\n"
        "  mov $pvh_pml4, %eax\n"
        "  mov %eax, %cr3\n"
        "  mov %cr4, %eax\n"
        "  or $0x20, %eax\n"
        "  mov %eax, %cr4\n"
        "  mov $0xc0000080, %ecx\n"
        "  rdmsr\n"
        "  or $0x100, %eax\n"
        "  wrmsr\n"
        "  mov %cr0, %eax\n"
        "  or $0x80000001, %eax\n"
        "  mov %eax, %cr0\n"
        "  ljmp $0x08, $pvh64\n"
        ".code64\n"
        "pvh64:\n"
        "  mov $0x10, %eax\n"
        "  mov %eax, %ds\n"
        "  mov %eax, %es\n"
        "  mov %eax, %ss\n"
        "  lea stack+16384(%rip), %rsp\n"
        "  call main64\n"
        "2: hlt\n"
        "  jmp 2b\n"
        ".section .note.pvh, \"a\"\n"
        ".p2align 2\n"
        ".long 4, 4, 18\n"
        ".asciz \"Xen\"\n"
        ".long pvh_start\n"
        ".text\n");
#endif
