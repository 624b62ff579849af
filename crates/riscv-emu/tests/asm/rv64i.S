#include "common.h"
START
  TEST(1)
  li a0, 5; addi a1, a0, -7; CHECK(a1, -2)
  TEST(2)
  li a0, 0x7fffffffffffffff; addi a1, a0, 1; CHECK(a1, 0x8000000000000000)
  TEST(3)
  li a0, -1; srli a1, a0, 60; CHECK(a1, 15)
  srai a2, a0, 60; CHECK(a2, -1)
  li a0, 1; slli a1, a0, 63; CHECK(a1, 0x8000000000000000)
  TEST(4)
  li a0, 0x80000000; addiw a1, a0, 0; CHECK(a1, 0xffffffff80000000)
  li a0, 0x7fffffff; addiw a1, a0, 1; CHECK(a1, 0xffffffff80000000)
  li a0, 0xffffffff; srliw a1, a0, 4; CHECK(a1, 0x0fffffff)
  sraiw a1, a0, 4; CHECK(a1, -1)
  li a0, 1; li a2, 35; sllw a1, a0, a2; CHECK(a1, 8)
  li a0, 0x100000000; li a2, 1; subw a1, a0, a2; CHECK(a1, -1)
  TEST(5)
  li a0, -1; li a2, 1; slt a1, a0, a2; CHECK(a1, 1)
  sltu a1, a0, a2; CHECK(a1, 0)
  slti a1, a0, 0; CHECK(a1, 1)
  sltiu a1, a2, -1; CHECK(a1, 1)
  li a0, 0xf0; xori a1, a0, -1; CHECK(a1, 0xffffffffffffff0f)
  ori a1, a0, 0xf; CHECK(a1, 0xff)
  andi a1, a0, 0x3f; CHECK(a1, 0x30)
  li a2, 0x0f; or a1, a0, a2; CHECK(a1, 0xff)
  and a1, a0, a2; CHECK(a1, 0)
  xor a1, a0, a2; CHECK(a1, 0xff)
  li a0, -16; li a2, 2; sra a1, a0, a2; CHECK(a1, -4)
  srl a1, a0, a2; CHECK(a1, 0x3ffffffffffffffc)
  sll a1, a0, a2; CHECK(a1, -64)
  li a2, 66; sll a1, a2, a2; CHECK(a1, 264)
  TEST(6)
  lui a0, 0x80000; CHECK(a0, 0xffffffff80000000)
  6: auipc a0, 0; la a1, 6b; CHECKR(a0, a1)
  TEST(7)  /* branches */
  li a0, -1; li a1, 1
  blt a0, a1, 1f; j fail; 1:
  bltu a0, a1, fail
  bge a1, a0, 1f; j fail; 1:
  bgeu a0, a1, 1f; j fail; 1:
  beq a0, a0, 1f; j fail; 1:
  bne a0, a1, 1f; j fail; 1:
  beq a0, a1, fail
  TEST(8)  /* jal / jalr link and target, jalr clears bit 0 */
  jal ra, 1f; 2: j fail; 1: la t0, 2b; CHECKR(ra, t0)
  la t0, 3f; addi t0, t0, 1; jalr ra, 0(t0); j fail; 3:
  TEST(9)  /* loads/stores, sign and zero extension */
  la s0, buf
  li a0, 0x8182838485868788; sd a0, 0(s0)
  lb a1, 0(s0); CHECK(a1, 0xffffffffffffff88)
  lbu a1, 0(s0); CHECK(a1, 0x88)
  lh a1, 0(s0); CHECK(a1, 0xffffffffffff8788)
  lhu a1, 0(s0); CHECK(a1, 0x8788)
  lw a1, 4(s0); CHECK(a1, 0xffffffff81828384)
  lwu a1, 4(s0); CHECK(a1, 0x81828384)
  ld a1, 0(s0); CHECKR(a1, a0)
  sb zero, 1(s0); sh zero, 2(s0); lwu a1, 0(s0); CHECK(a1, 0x88)
  sw a0, 8(s0); lwu a1, 8(s0); CHECK(a1, 0x85868788)
  TEST(10) /* misaligned within a page and across a page boundary */
  li a0, 0x1122334455667788
  sd a0, 3(s0); ld a1, 3(s0); CHECKR(a1, a0)
  lw a1, 5(s0); CHECK(a1, 0x33445566)
  lh a1, 4(s0); CHECK(a1, 0x6677)
  la s1, page2; addi s1, s1, -3
  sd a0, 0(s1); ld a1, 0(s1); CHECKR(a1, a0)
  lhu a1, 2(s1); CHECK(a1, 0x5566)
  lbu a1, 3(s1); CHECK(a1, 0x55)
  TEST(11) /* x0 stays zero */
  li x0, 5; addi x0, x0, 1; mv a0, x0; CHECK(a0, 0)
  TEST(12) /* ebreak traps with mtval = pc, ecall from M = 11 */
  la t0, 1f; csrw mtvec, t0
  2: ebreak
  j fail
  .align 2
  1: csrr a0, mcause; CHECK(a0, 3)
  csrr a0, mtval; la a1, 2b; CHECKR(a0, a1)
  csrr a0, mepc; CHECKR(a0, a1)
  la t0, 1f; csrw mtvec, t0
  ecall
  j fail
  .align 2
  1: csrr a0, mcause; CHECK(a0, 11)
  j pass
PARK_OTHERS
END
  .align 3
buf: .space 64
  .align 12
  .space 8
page2: .space 64
