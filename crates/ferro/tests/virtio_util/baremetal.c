/* A bare-metal virtio-mmio driver for ferro's end-to-end virtio tests. It runs
 * in M mode under `ferro run --bios none` (console and exit through HTIF),
 * polls used rings (no interrupts), and plays both an honest driver and a
 * hostile one that writes malformed descriptor chains into guest RAM.
 * TEST selects the scenario (compile with -DTEST=n). */

typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

volatile u64 tohost __attribute__((section(".tohost"), aligned(64)));
volatile u64 fromhost __attribute__((section(".tohost"), aligned(64)));

char stack[16384] __attribute__((aligned(16), used));

__asm__(".section .text.init,\"ax\"\n"
        ".globl _start\n"
        "_start:\n"
        "  la sp, stack + 16384\n"
        "  call main\n"
        "1: j 1b\n");

static void putc_(char c) {
    tohost = 0x0101000000000000ul | (u8)c;
    while (tohost) {
    }
}
static void puts_(const char *s) {
    while (*s) putc_(*s++);
}
static void puthex(u64 v) {
    puts_("0x");
    for (int i = 60; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 15]);
}
static void exit_(u32 code) {
    tohost = ((u64)code << 1) | 1;
    for (;;) {
    }
}
static void fail(const char *what, u32 code) {
    puts_("FAIL: ");
    puts_(what);
    puts_("\n");
    exit_(code);
}
static inline void fence(void) { __asm__ volatile("fence rw,rw" ::: "memory"); }
static inline u64 rdtime(void) {
    u64 t;
    __asm__ volatile("rdtime %0" : "=r"(t));
    return t;
}
static void memset_(void *p, int c, u64 n) {
    volatile u8 *b = p;
    while (n--) *b++ = (u8)c;
}

#define REG(base, off) (*(volatile u32 *)((base) + (off)))
#define SLOT(i) (0x10001000ul + (u64)(i) * 0x1000ul)
#define TIMEOUT (10ul * 10000000ul) /* 10 s of a 10 MHz timebase */

struct vq {
    u64 desc, avail, used;
    u16 size, avail_idx, last_used;
};

struct dev {
    u64 base;
    struct vq q[2];
    int nq;
};

static int dev_init(struct dev *d, u64 base, u32 id, int nq, u64 ring_base) {
    d->base = base;
    d->nq = nq;
    if (REG(base, 0) != 0x74726976 || REG(base, 4) != 2 || REG(base, 8) != id) return -1;
    REG(base, 0x70) = 0;
    REG(base, 0x70) = 1;
    REG(base, 0x70) = 3;
    REG(base, 0x24) = 1;
    REG(base, 0x20) = 1; /* VIRTIO_F_VERSION_1 only */
    REG(base, 0x24) = 0;
    REG(base, 0x20) = 0;
    REG(base, 0x70) = 0xb;
    if (!(REG(base, 0x70) & 8)) return -2;
    for (int i = 0; i < nq; i++) {
        struct vq *q = &d->q[i];
        REG(base, 0x30) = i;
        if (REG(base, 0x34) < 16) return -3;
        q->size = 16;
        q->desc = ring_base + (u64)i * 0x4000;
        q->avail = q->desc + 16 * 16;
        q->used = q->desc + 0x1000;
        q->avail_idx = 0;
        q->last_used = 0;
        memset_((void *)q->desc, 0, 0x2000);
        fence();
        REG(base, 0x38) = 16;
        REG(base, 0x80) = (u32)q->desc;
        REG(base, 0x84) = (u32)(q->desc >> 32);
        REG(base, 0x90) = (u32)q->avail;
        REG(base, 0x94) = (u32)(q->avail >> 32);
        REG(base, 0xa0) = (u32)q->used;
        REG(base, 0xa4) = (u32)(q->used >> 32);
        REG(base, 0x44) = 1;
    }
    REG(base, 0x70) = 0xf;
    return (REG(base, 0x70) & 0x40) ? -4 : 0;
}

static void set_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next) {
    volatile u8 *p = (volatile u8 *)(q->desc + 16ul * i);
    *(volatile u64 *)p = addr;
    *(volatile u32 *)(p + 8) = len;
    *(volatile u16 *)(p + 12) = flags;
    *(volatile u16 *)(p + 14) = next;
}

static void publish(struct dev *d, int qi, u16 head) {
    struct vq *q = &d->q[qi];
    *(volatile u16 *)(q->avail + 4 + 2ul * (q->avail_idx % q->size)) = head;
    fence();
    q->avail_idx++;
    *(volatile u16 *)(q->avail + 2) = q->avail_idx;
    fence();
    REG(d->base, 0x50) = qi;
}

/* Waits for the next used element; returns its length, or -1 on timeout. */
static long wait_used(struct dev *d, int qi) {
    struct vq *q = &d->q[qi];
    u64 t0 = rdtime();
    while (rdtime() - t0 < TIMEOUT) {
        fence();
        if (*(volatile u16 *)(q->used + 2) != q->last_used) {
            u64 e = q->used + 4 + 8ul * (q->last_used % q->size);
            q->last_used++;
            return *(volatile u32 *)(e + 4);
        }
    }
    return -1;
}

static int wait_needs_reset(struct dev *d) {
    u64 t0 = rdtime();
    while (rdtime() - t0 < TIMEOUT)
        if (REG(d->base, 0x70) & 0x40) return 1;
    return 0;
}

#define BUF 0x80400000ul

/* rng: 64 bytes of randomness, checked non-constant. */
static void rng_read(struct dev *rng, u32 code) {
    memset_((void *)BUF, 0, 64);
    set_desc(&rng->q[0], 0, BUF, 64, 2, 0);
    publish(rng, 0, 0);
    if (wait_used(rng, 0) != 64) fail("rng request not served", code);
    u8 *b = (u8 *)BUF;
    int diff = 0;
    for (int i = 1; i < 64; i++) diff |= b[i] ^ b[0];
    if (!diff) fail("rng returned constant bytes", code + 1);
}

/* console: one line out on the transmit queue. */
static void con_write(struct dev *con, const char *s, u32 code) {
    u64 a = BUF + 0x1000;
    u32 n = 0;
    while (s[n]) {
        ((volatile u8 *)a)[n] = s[n];
        n++;
    }
    set_desc(&con->q[1], 0, a, n, 0, 0);
    publish(con, 1, 0);
    if (wait_used(con, 1) < 0) fail("console tx not served", code);
}

int main(void) {
    struct dev rng, con;
    /* Slot order follows ferro's flag order: --rng, then --virtio-console. */
    if (dev_init(&rng, SLOT(0), 4, 1, 0x80200000ul)) fail("rng init", 10);
    if (dev_init(&con, SLOT(1), 3, 2, 0x80210000ul)) fail("console init", 11);
    rng_read(&rng, 12);
    con_write(&con, "line 1 from the guest\n", 14);
    puts_("honest driver ok\n");

    /* Hostile 1: a descriptor loop on the rng queue. */
    set_desc(&rng.q[0], 3, BUF, 16, 1 | 2, 4);
    set_desc(&rng.q[0], 4, BUF + 64, 16, 1 | 2, 3);
    publish(&rng, 0, 3);
    if (!wait_needs_reset(&rng)) fail("loop: no DEVICE_NEEDS_RESET", 20);
    if (!(REG(rng.base, 0x60) & 2)) fail("loop: no config interrupt", 21);
    puts_("loop -> needs reset\n");
    con_write(&con, "line 2 after the rng broke\n", 22);

    /* Hostile 2: an rng buffer outside guest RAM, after a reset. */
    if (dev_init(&rng, SLOT(0), 4, 1, 0x80200000ul)) fail("rng re-init", 23);
    rng_read(&rng, 24);
    set_desc(&rng.q[0], 0, 0x4000000000ul, 4096, 2, 0);
    publish(&rng, 0, 0);
    if (!wait_needs_reset(&rng)) fail("oob: no DEVICE_NEEDS_RESET", 26);
    puts_("out of range -> needs reset\n");

    /* Hostile 3: avail index jump on the console transmit queue. */
    con.q[1].avail_idx += 1000;
    *(volatile u16 *)(con.q[1].avail + 2) = con.q[1].avail_idx;
    fence();
    REG(con.base, 0x50) = 1;
    if (!wait_needs_reset(&con)) fail("avail jump: no DEVICE_NEEDS_RESET", 27);
    puts_("avail jump -> needs reset\n");

    /* Both devices recover after a driver reset. */
    if (dev_init(&rng, SLOT(0), 4, 1, 0x80200000ul)) fail("rng re-init 2", 28);
    if (dev_init(&con, SLOT(1), 3, 2, 0x80210000ul)) fail("console re-init", 29);
    rng_read(&rng, 30);
    con_write(&con, "line 3 after both resets\n", 32);
    puts_("all ok\n");
    exit_(0);
    return 0;
}
