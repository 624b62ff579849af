#include "common.h"
#define CLINT 0x2000000
#define N 200000
START
  li s1, 0
  j worker
other_harts:
  la t0, unexpected_trap; csrw mtvec, t0
  csrr s1, mhartid
worker:
  la s0, counters
  li t1, N
1: li t2, 1; amoadd.w zero, t2, 0(s0); addi t1, t1, -1; bnez t1, 1b
  li t1, N; addi a5, s0, 8
2: lr.d t3, (a5); addi t3, t3, 1; sc.d t4, t3, (a5); bnez t4, 2b
  addi t1, t1, -1; bnez t1, 2b
  li t2, 1; addi a6, s0, 16; amoadd.w zero, t2, (a6)
  bnez s1, wait_ipi
3: lw t0, 16(s0); li t2, 4; bne t0, t2, 3b
  TEST(1)
  lw t0, 0(s0); li t2, 4 * N; CHECKR(t0, t2)
  TEST(2)
  ld t0, 8(s0); CHECKR(t0, t2)
  TEST(3) /* IPIs to harts 1..3 through msip */
  li t0, CLINT; li t1, 1; sw t1, 4(t0); sw t1, 8(t0); sw t1, 12(t0)
4: lw t0, 24(s0); li t2, 3; bne t0, t2, 4b
  li t0, CLINT; lw t1, 4(t0); lw t2, 8(t0); or t1, t1, t2; lw t2, 12(t0); or t1, t1, t2; CHECK(t1, 0)
  j pass
wait_ipi:
  li t0, 8; csrw mie, t0
5: wfi; csrr t0, mip; andi t0, t0, 8; beqz t0, 5b
  li t0, CLINT; slli t1, s1, 2; add t0, t0, t1; sw zero, 0(t0)
  li t2, 1; addi a6, s0, 24; amoadd.w zero, t2, (a6)
6: wfi; j 6b
END
  .align 6
counters: .space 64
