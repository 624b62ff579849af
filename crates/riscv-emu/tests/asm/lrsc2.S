#include "common.h"
/* Two harts: hart 1 reserves a word with LR, hart 0 then stores to it, and
   hart 1's SC must fail and leave hart 0's value in place. */
START
  la s0, shared
  TEST(1)
1: ld t0, 8(s0); beqz t0, 1b          /* hart 1 holds a reservation */
  li t1, 99; sd t1, 0(s0)             /* conflicting store */
  li t1, 1; sd t1, 16(s0)
2: ld t0, 32(s0); beqz t0, 2b         /* hart 1 finished */
  ld t0, 24(s0); CHECK(t0, 1)         /* its SC failed */
  TEST(2)
  ld t0, 0(s0); CHECK(t0, 99)
  j pass
other_harts:
  la s0, shared
  li t1, 1
  csrr t2, mhartid; bne t2, t1, park
  lr.d a0, (s0)
  sd t1, 8(s0)
3: ld t0, 16(s0); beqz t0, 3b
  li a1, 7; sc.d t3, a1, (s0)
  sd t3, 24(s0)
  sd t1, 32(s0)
park: wfi; j park
END
  .align 6
shared: .space 64
