#include "common.h"
START
  la s0, patch
  TEST(1)
  jalr s0; CHECK(a0, 1)
  TEST(2) /* rewrite the instruction, fence.i, run the new one */
  li t0, 0x00200513; sw t0, 0(s0)   /* li a0, 2 */
  fence.i
  jalr s0; CHECK(a0, 2)
  TEST(3) /* also seen without fence.i (stores invalidate decoded code) */
  li t0, 0x00300513; sw t0, 0(s0)
  jalr s0; CHECK(a0, 3)
  TEST(4) /* code patched in a loop */
  li s1, 0
1: addi s1, s1, 1
  slli t0, s1, 20; li t1, 0x00000513; or t0, t0, t1; sw t0, 0(s0)
  jalr s0; CHECKR(a0, s1)
  li t2, 100; bltu s1, t2, 1b
  TEST(5) /* a compressed instruction patched inside the same block */
  la s2, patch2
  jalr s2; CHECK(a0, 5)
  li t0, 0x4519; sh t0, 0(s2)     /* c.li a0, 6 */
  fence.i
  jalr s2; CHECK(a0, 6)
  j pass
  .option push
  .option norvc
  .align 4
patch: li a0, 1
  ret
  .option pop
  .align 4
patch2: c.li a0, 5
  ret
PARK_OTHERS
END
