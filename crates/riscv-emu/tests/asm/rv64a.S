#include "common.h"
START
  la s0, word
  TEST(1) /* AMOs return the old value and store the result (64-bit) */
  li a0, 10; sd a0, 0(s0)
  li a1, 5; amoadd.d a2, a1, (s0); CHECK(a2, 10); ld a3, 0(s0); CHECK(a3, 15)
  li a1, 0xff; amoxor.d a2, a1, (s0); ld a3, 0(s0); CHECK(a3, 0xf0)
  li a1, 0x3c; amoand.d a2, a1, (s0); ld a3, 0(s0); CHECK(a3, 0x30)
  li a1, 0x1; amoor.d a2, a1, (s0); ld a3, 0(s0); CHECK(a3, 0x31)
  li a1, 7; amoswap.d a2, a1, (s0); CHECK(a2, 0x31); ld a3, 0(s0); CHECK(a3, 7)
  li a1, -5; amomin.d a2, a1, (s0); ld a3, 0(s0); CHECK(a3, -5)
  li a1, 3; amomax.d a2, a1, (s0); ld a3, 0(s0); CHECK(a3, 3)
  li a1, -1; amominu.d a2, a1, (s0); ld a3, 0(s0); CHECK(a3, 3)
  amomaxu.d a2, a1, (s0); ld a3, 0(s0); CHECK(a3, -1)
  TEST(2) /* 32-bit AMOs sign-extend the old value */
  li a0, 0x80000000; sw a0, 8(s0); addi s1, s0, 8
  li a1, 1; amoadd.w a2, a1, (s1); CHECK(a2, 0xffffffff80000000)
  lwu a3, 0(s1); CHECK(a3, 0x80000001)
  li a1, 5; amomin.w a2, a1, (s1); lw a3, 0(s1); CHECK(a3, 0xffffffff80000001)
  amominu.w a2, a1, (s1); lw a3, 0(s1); CHECK(a3, 5)
  li a1, -1; amomax.w a2, a1, (s1); lw a3, 0(s1); CHECK(a3, 5)
  amomaxu.w a2, a1, (s1); lw a3, 0(s1); CHECK(a3, -1)
  amoswap.w a2, zero, (s1); CHECK(a2, -1)
  li a1, 6; amoor.w a2, a1, (s1); amoand.w a2, a1, (s1); amoxor.w a2, a1, (s1); lw a3, 0(s1); CHECK(a3, 0)
  TEST(3) /* LR/SC success */
  li a0, 100; sd a0, 0(s0)
  lr.d a1, (s0); CHECK(a1, 100); addi a1, a1, 1; sc.d a2, a1, (s0); CHECK(a2, 0)
  ld a3, 0(s0); CHECK(a3, 101)
  lr.w a1, (s1); li a4, 9; sc.w a2, a4, (s1); CHECK(a2, 0); lw a3, 0(s1); CHECK(a3, 9)
  TEST(4) /* SC without reservation fails */
  li a1, 5; sc.d a2, a1, (s0); CHECK(a2, 1); ld a3, 0(s0); CHECK(a3, 101)
  TEST(5) /* SC after the reserved value changed fails */
  lr.d a1, (s0); li a4, 200; sd a4, 0(s0); sc.d a2, a1, (s0); CHECK(a2, 1); ld a3, 0(s0); CHECK(a3, 200)
  TEST(6) /* SC to a different address fails; a second SC fails too */
  lr.d a1, (s0); addi t1, s0, 16; sc.d a2, a1, (t1); CHECK(a2, 1)
  lr.d a1, (s0); sc.d a2, a1, (s0); CHECK(a2, 0); sc.d a2, a1, (s0); CHECK(a2, 1)
  TEST(7) /* misaligned AMO -> store/AMO misaligned (6); LR -> load misaligned (4) */
  la t0, 1f; csrw mtvec, t0
  addi t1, s0, 4; amoadd.d a2, a1, (t1)
  j fail
  .align 2
1: csrr a0, mcause; CHECK(a0, 6); csrr a0, mtval; CHECKR(a0, t1)
  la t0, 1f; csrw mtvec, t0
  addi t1, s0, 2; lr.w a2, (t1)
  j fail
  .align 2
1: csrr a0, mcause; CHECK(a0, 4)
  TEST(8) /* AMO on MMIO faults with store access fault (7) */
  la t0, 1f; csrw mtvec, t0
  li t1, 0x10000000; amoadd.d a2, a1, (t1)
  j fail
  .align 2
1: csrr a0, mcause; CHECK(a0, 7)
  j pass
PARK_OTHERS
END
  .align 4
word: .space 32
