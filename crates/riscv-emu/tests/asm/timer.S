#include "common.h"
#define CLINT 0x2000000
START
  li s0, CLINT
  TEST(1) /* WFI sleeps until mtimecmp; wakes with MIE clear */
  li t0, 0x80; csrw mie, t0
  csrr a0, time; li t1, 20000; add a1, a0, t1   /* 2 ms at 10 MHz */
  li t2, 0x4000; add t2, s0, t2; sd a1, 0(t2)
  csrr a2, mip; andi a2, a2, 0x80; CHECK(a2, 0)
1: wfi
  csrr a2, mip; andi a2, a2, 0x80; beqz a2, 1b
  csrr a3, time; bltu a3, a1, fail
  li t0, 0xbff8; add t0, s0, t0; ld a4, 0(t0); bltu a4, a1, fail   /* mtime via MMIO */
  TEST(2) /* machine timer interrupt taken */
  CATCH_TO(1f)
  li t0, 8; csrs mstatus, t0
2: j 2b
1: li t0, 0x8000000000000007; CHECKR(s10, t0)
  li t0, -1; li t2, 0x4000; add t2, s0, t2; sd t0, 0(t2)
  csrr a2, mip; andi a2, a2, 0x80; CHECK(a2, 0)
  TEST(3) /* Sstc: stimecmp raises STIP, delegated to S, WFI in S wakes */
  li t0, 1; slli t0, t0, 63; csrw menvcfg, t0
  li t0, 2; csrw mcounteren, t0
  li t0, 0x20; csrw mideleg, t0; csrw mie, t0
  csrs mip, t0; csrr a2, mip; andi a2, a2, 0x20; CHECK(a2, 0)   /* STIP read-only now */
  la t0, s_timer; csrw stvec, t0
  li s7, 0
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: csrr a0, time; li t1, 20000; add a0, a0, t1; csrw stimecmp, a0
  csrsi sstatus, 2
3: wfi
  j 3b
1: CHECK(s10, 9); li t0, 0x8000000000000005; CHECKR(s7, t0)
  csrw mie, zero; csrw mideleg, zero
  TEST(4) /* MSIP self-IPI through the ACLINT */
  li t0, 8; csrw mie, t0
  li t0, 1; sw t0, 0(s0)
  csrr a2, mip; andi a2, a2, 8; CHECK(a2, 8)
  lw a3, 0(s0); CHECK(a3, 1)
  CATCH_TO(1f)
  li t0, 8; csrs mstatus, t0
2: j 2b
1: li t0, 0x8000000000000003; CHECKR(s10, t0)
  sw zero, 0(s0)
  csrr a2, mip; andi a2, a2, 8; CHECK(a2, 0)
  TEST(5) /* 32-bit halves of mtimecmp */
  li t0, 0x4000; add t2, s0, t0
  li t1, 0x12345678; sw t1, 0(t2); li t1, 0x9abcdef0; sw t1, 4(t2)
  ld a0, 0(t2); li t1, 0x9abcdef012345678; CHECKR(a0, t1)
  j pass
  .align 2
s_timer: csrr s7, scause; li t0, -1; csrw stimecmp, t0; ecall
M_CATCH
PARK_OTHERS
END
