#include "common.h"
/* PMP: NAPOT, TOR and NA4 entries, S/U checked against them (no match =
   denied), M only against locked ones, access-fault causes and mtval,
   a rule boundary inside a page, TLB flush on PMP writes, MPRV, and the
   page-table walk checked as an S-mode read. */
#define S_STEP(...) CATCH_TO(1f); GOTO_MODE(1, 2f); 2: __VA_ARGS__; ecall; 1:
#define U_STEP(...) CATCH_TO(1f); GOTO_MODE(0, 2f); 2: __VA_ARGS__; ecall; 1:
#define NAPOT4K(dst, page) la dst, page; srli dst, dst, 2; ori dst, dst, 0x1ff
START
  la a0, page1; la a1, page2; la a2, page3
  TEST(1) /* no entry matches: S fetch faults (cause 1, mtval = pc); M is not checked */
  csrw pmpcfg0, zero
  li t0, 0x77; sd t0, 0(a0)
  CATCH_TO(1f); GOTO_MODE(1, 2f)
2: ld t1, 0(a0)
  j fail
1: CHECK(s10, 1); la t0, 2b; CHECKR(s11, t0)
  TEST(2) /* NAPOT read-only page ahead of an all-memory RWX entry */
  NAPOT4K(t0, page1); csrw pmpaddr0, t0; li t0, -1; csrw pmpaddr1, t0
  li t0, 0x1f19; csrw pmpcfg0, t0
  S_STEP(ld s5, 0(a0))
  CHECK(s10, 9); CHECK(s5, 0x77)
  S_STEP(sd zero, 8(a0))
  CHECK(s10, 7); addi t0, a0, 8; CHECKR(s11, t0)
  U_STEP(ld s5, 0(a0))
  CHECK(s10, 8); CHECK(s5, 0x77)
  U_STEP(jr a0)
  CHECK(s10, 1); CHECKR(s11, a0)
  sd t0, 16(a0)               /* M: unlocked entries do not apply */
  TEST(3) /* TOR [page2, page2 + 4 KiB) read-only; its neighbours stay writable */
  srli t0, a1, 2; csrw pmpaddr0, t0; addi t0, t0, 0x400; csrw pmpaddr1, t0; li t0, -1; csrw pmpaddr2, t0
  li t0, 0x1f0900; csrw pmpcfg0, t0
  S_STEP(sd zero, 0(a1))
  CHECK(s10, 7); CHECKR(s11, a1)
  S_STEP(li t1, 0xff8; add t1, t1, a1; ld s5, 0(t1); sd zero, -8(a1); sd zero, 8(t1))
  CHECK(s10, 9)
  TEST(4) /* NA4 word inside a page: exact checks around it */
  addi t0, a2, 8; srli t0, t0, 2; csrw pmpaddr0, t0; li t0, -1; csrw pmpaddr1, t0
  li t0, 0x1f10; csrw pmpcfg0, t0
  S_STEP(ld s5, 0(a2); ld s6, 16(a2); sw zero, 4(a2); sw zero, 12(a2))
  CHECK(s10, 9)
  S_STEP(lw s5, 8(a2))
  CHECK(s10, 5); addi t0, a2, 8; CHECKR(s11, t0)
  S_STEP(sw zero, 8(a2))
  CHECK(s10, 7)
  S_STEP(ld s5, 4(a2))        /* 8 bytes, half of them in the NA4 word */
  CHECK(s10, 5)
  S_STEP(ld s5, 0(a2))        /* the page still works after the faults */
  CHECK(s10, 9)
  TEST(5) /* a PMP write takes effect at once (the TLB is flushed) */
  li t0, -1; csrw pmpaddr0, t0; li t0, 0x1f; csrw pmpcfg0, t0
  S_STEP(ld s5, 0(a0))
  CHECK(s10, 9)
  NAPOT4K(t0, page1); csrw pmpaddr0, t0; li t0, -1; csrw pmpaddr1, t0
  li t0, 0x1f18; csrw pmpcfg0, t0
  S_STEP(ld s5, 0(a0))
  CHECK(s10, 5)
  TEST(6) /* MPRV with MPP = S: M-mode loads are checked as S ones */
  CATCH_TO(1f)
  li t0, 3 << 11; csrc mstatus, t0; li t0, (1 << 17) | (1 << 11); csrs mstatus, t0
  ld s5, 0(a0)
1: li t0, 1 << 17; csrc mstatus, t0
  CHECK(s10, 5)
  TEST(7) /* the page-table walk reads PTEs as S mode */
  la t1, pt_root; li t0, (0x80000 << 10) | 0xcf; sd t0, 16(t1)
  NAPOT4K(t0, pt_root); csrw pmpaddr0, t0; li t0, 0x1f18; csrw pmpcfg0, t0
  srli t0, t1, 12; li t2, 8 << 60; or t0, t0, t2; csrw satp, t0
  CATCH_TO(1f); GOTO_MODE(1, 2f)
2: ld s5, 0(a0)
  j fail
1: CHECK(s10, 1); la t0, 2b; CHECKR(s11, t0)
  li t0, 0x1f19; csrw pmpcfg0, t0    /* PTEs readable: the walk works */
  S_STEP(ld s5, 0(a0))
  CHECK(s10, 9); CHECK(s5, 0x77)
  csrw satp, zero
  TEST(8) /* a locked entry binds M mode too, and freezes its address */
  NAPOT4K(t0, page1); csrw pmpaddr0, t0
  li t0, 0x1f99; csrw pmpcfg0, t0
  ld s5, 0(a0); CHECK(s5, 0x77)
  CATCH_TO(1f)
  sd zero, 0(a0)
1: CHECK(s10, 7); CHECKR(s11, a0)
  csrw pmpaddr0, zero; csrr t1, pmpaddr0; NAPOT4K(t0, page1); CHECKR(t1, t0)
  csrw pmpcfg0, zero; csrr t1, pmpcfg0; andi t1, t1, 0xff; CHECK(t1, 0x99)
  j pass
M_CATCH
PARK_OTHERS
END
  .align 12
page1: .space 4096
page2: .space 4096
page3: .space 4096
pt_root: .space 4096
