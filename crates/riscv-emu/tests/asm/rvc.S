#include "common.h"
START
  .option push
  .option rvc
  la s0, buf
  TEST(1)
  c.li a0, -3; c.addi a0, 5; CHECK(a0, 2)
  c.li a1, 31; c.addiw a1, 1; CHECK(a1, 32)
  li a2, 0x7fffffff; c.addiw a2, 1; CHECK(a2, 0xffffffff80000000)
  c.lui a3, 0xfffe1; CHECK(a3, 0xfffffffffffe1000)
  c.lui a3, 1; CHECK(a3, 0x1000)
  TEST(2)
  c.mv a4, a3; c.add a4, a3; CHECK(a4, 0x2000)
  c.li a0, 12; c.li a1, 10
  c.sub a0, a1; CHECK(a0, 2)
  c.li a0, 12; c.xor a0, a1; CHECK(a0, 6)
  c.li a0, 12; c.or a0, a1; CHECK(a0, 14)
  c.li a0, 12; c.and a0, a1; CHECK(a0, 8)
  li a0, 0x80000000; c.li a1, 0; c.subw a0, a1; CHECK(a0, 0xffffffff80000000)
  li a0, 0x7fffffff; c.li a1, 1; c.addw a0, a1; CHECK(a0, 0xffffffff80000000)
  c.li a0, -16; c.srai a0, 2; CHECK(a0, -4)
  c.srli a0, 60; CHECK(a0, 15)
  c.slli a0, 60; CHECK(a0, 0xf000000000000000)
  c.li a0, -1; c.andi a0, 0x15; CHECK(a0, 0x15)
  TEST(3) /* sp-relative and register loads/stores */
  mv t0, sp; mv sp, s0
  li a0, 0x1122334455667788
  c.sdsp a0, 8(sp); c.ldsp a1, 8(sp); CHECKR(a1, a0)
  c.swsp a0, 16(sp); c.lwsp a1, 16(sp); CHECK(a1, 0x55667788)
  c.addi16sp sp, 32; addi a2, s0, 32; CHECKR(sp, a2)
  c.addi4spn a2, sp, 8; addi a3, s0, 40; CHECKR(a2, a3)
  mv sp, t0
  mv a2, s0
  c.sd a0, 0(a2); c.ld a3, 0(a2); CHECKR(a3, a0)
  c.sw a0, 4(a2); c.lw a3, 4(a2); CHECK(a3, 0x55667788)
  TEST(4) /* FP compressed loads/stores */
  li t0, 0x6000; csrs mstatus, t0
  c.sd a0, 0(a2); c.fld fa0, 0(a2); c.fsd fa0, 8(a2); c.ld a3, 8(a2); CHECKR(a3, a0)
  mv t0, sp; mv sp, s0
  c.fldsp fa1, 0(sp); c.fsdsp fa1, 16(sp); c.ldsp a3, 16(sp); CHECKR(a3, a0)
  mv sp, t0
  TEST(5) /* control flow */
  c.li a0, 0
  c.beqz a0, 1f; j fail; 1:
  c.bnez a0, fail
  c.j 1f; j fail; 1:
  la t1, 2f; c.jr t1; j fail; 2:
  la t1, 3f; c.jalr t1; 4: j fail; 3: la t2, 4b; CHECKR(ra, t2)
  TEST(6) /* c.ebreak: mcause 3; illegal all-zero parcel: mtval 0 */
  la t0, 1f; csrw mtvec, t0
  c.ebreak
  j fail
  .align 2
1: csrr a0, mcause; CHECK(a0, 3)
  la t0, 1f; csrw mtvec, t0
  .2byte 0
  j fail
  .align 2
1: csrr a0, mcause; CHECK(a0, 2); csrr a0, mtval; CHECK(a0, 0)
  TEST(7) /* reserved c.addiw rd=0 is illegal, mtval = the parcel */
  la t0, 1f; csrw mtvec, t0
  .2byte 0x2005
  j fail
  .align 2
1: csrr a0, mcause; CHECK(a0, 2); csrr a0, mtval; CHECK(a0, 0x2005)
  .option pop
  j pass
PARK_OTHERS
END
  .align 4
buf: .space 64
