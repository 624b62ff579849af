#include "common.h"
#define LINES 0x10000038
START
  li s0, LINES
  TEST(1) /* the PLIC's S line shows in mip.SEIP and sip.SEIP */
  li t0, 1; sd t0, 0(s0)
  csrr a0, mip; andi a0, a0, 0x200; CHECK(a0, 0x200)
  li t0, 0x200; csrw mideleg, t0
  csrr a0, sip; andi a0, a0, 0x200; CHECK(a0, 0x200)
  TEST(2) /* read-modify-write of mip must not latch the external SEIP */
  li t0, 2; csrs mip, t0
  sd zero, 0(s0)
  csrr a0, mip; andi a1, a0, 0x200; CHECK(a1, 0); andi a1, a0, 2; CHECK(a1, 2)
  csrc mip, t0
  TEST(3) /* software SEIP ORs with the line, clearing it leaves the line */
  li t0, 0x200; csrs mip, t0
  csrr a0, mip; andi a0, a0, 0x200; CHECK(a0, 0x200)
  li t1, 1; sd t1, 0(s0)
  csrc mip, t0
  csrr a0, mip; andi a0, a0, 0x200; CHECK(a0, 0x200)
  sd zero, 0(s0)
  csrr a0, mip; andi a0, a0, 0x200; CHECK(a0, 0)
  TEST(4) /* the M line raises a machine external interrupt (mcause 11) */
  CATCH_TO(1f)
  li t0, 0x800; csrw mie, t0; li t0, 8; csrs mstatus, t0
  li t1, 2; sd t1, 0(s0)
2: j 2b
1: li t0, 0x800000000000000b; CHECKR(s10, t0)
  sd zero, 0(s0); csrw mie, zero
  TEST(5) /* the S line, delegated, interrupts S mode (scause 9) */
  la t0, s_ext; csrw stvec, t0
  li t0, 0x200; csrw mie, t0
  li s7, 0
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: csrsi sstatus, 2
  li t1, 1; sd t1, 0(s0)
3: j 3b
1: CHECK(s10, 9); li t0, 0x8000000000000009; CHECKR(s7, t0)
  j pass
  .align 2
s_ext: csrr s7, scause; sd zero, 0(s0); ecall
M_CATCH
PARK_OTHERS
END
