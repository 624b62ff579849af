#include "common.h"
START
  TEST(1) /* ecall cause by mode */
  CATCH_TO(1f)
  GOTO_MODE(0, 2f)
2: ecall
1: CHECK(s10, 8)
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: ecall
1: CHECK(s10, 9)
  csrr a0, mstatus; srli a0, a0, 11; andi a0, a0, 3; CHECK(a0, 1)  /* MPP = S */
  TEST(2) /* delegated ecall from U goes to S; S's ecall goes to M */
  li t0, 1 << 8; csrw medeleg, t0
  la t0, s_handler; csrw stvec, t0
  li s7, -1
  CATCH_TO(1f)
  GOTO_MODE(0, 2f)
2: ecall
1: CHECK(s10, 9); CHECK(s7, 8)
  la t0, 2b; CHECKR(s6, t0)   /* sepc */
  csrr a0, mstatus; andi a0, a0, 1 << 8; CHECK(a0, 0)   /* SPP = U */
  csrw medeleg, zero
  TEST(3) /* illegal opcodes: mtval = bits */
  CATCH_TO(1f)
  .word 0x0000000b
1: CHECK(s10, 2); CHECK(s11, 0x0000000b)
  CATCH_TO(1f)
  .word 0xfe000033
1: CHECK(s10, 2); CHECK(s11, 0xfe000033)
  CATCH_TO(1f)
  .word 0x00004073   /* SYSTEM funct3 4 */
1: CHECK(s10, 2)
  TEST(4) /* M-only CSR from S is illegal; sret from S to U; S CSR from U illegal */
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: csrr a0, mstatus
  j fail
1: CHECK(s10, 2)
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: li t0, 1 << 8; csrc sstatus, t0; la t0, 3f; csrw sepc, t0; sret
3: csrr a0, sstatus
  j fail
1: CHECK(s10, 2); la t0, 3b; CHECKR(s8, t0)
  TEST(5) /* TSR, TW, TVM */
  li t0, 1 << 22; csrs mstatus, t0
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: sret
  j fail
1: CHECK(s10, 2)
  li t0, 1 << 22; csrc mstatus, t0
  li t0, 1 << 21; csrs mstatus, t0
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: wfi
  j fail
1: CHECK(s10, 2)
  li t0, 1 << 21; csrc mstatus, t0
  li t0, 1 << 20; csrs mstatus, t0
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: csrr a0, satp
  j fail
1: CHECK(s10, 2)
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: sfence.vma
  j fail
1: CHECK(s10, 2)
  li t0, 1 << 20; csrc mstatus, t0
  CATCH_TO(1f)
  GOTO_MODE(0, 2f)
2: wfi
  j fail
1: CHECK(s10, 2)
  CATCH_TO(1f)
  GOTO_MODE(0, 2f)
2: mret
  j fail
1: CHECK(s10, 2)
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: mret
  j fail
1: CHECK(s10, 2)
  TEST(6) /* FS: Off makes FP illegal; writes make it Dirty with SD */
  la t0, unexpected_trap; csrw mtvec, t0
  li t0, 3 << 13; csrc mstatus, t0
  CATCH_TO(1f)
  fmv.d.x fa0, zero
  j fail
1: CHECK(s10, 2)
  CATCH_TO(1f)
  csrr a0, fflags
  j fail
1: CHECK(s10, 2)
  CATCH_TO(1f)
  fld fa0, 0(sp)
  j fail
1: CHECK(s10, 2)
  la t0, unexpected_trap; csrw mtvec, t0
  li t0, 1 << 13; csrs mstatus, t0   /* Initial */
  csrr a0, mstatus; bltz a0, fail
  fmv.d.x fa0, zero
  csrr a0, mstatus; srli a1, a0, 13; andi a1, a1, 3; CHECK(a1, 3); bgez a0, fail
  li t0, 3 << 13; csrc mstatus, t0; li t0, 1 << 13; csrs mstatus, t0
  csrwi fflags, 0
  csrr a0, mstatus; srli a1, a0, 13; andi a1, a1, 3; CHECK(a1, 3)
  li t0, 3 << 13; csrc mstatus, t0; li t0, 2 << 13; csrs mstatus, t0  /* Clean */
  fadd.d fa1, fa0, fa0
  csrr a0, sstatus; srli a1, a0, 13; andi a1, a1, 3; CHECK(a1, 3); bgez a0, fail
  TEST(7) /* software interrupt delegated to S, taken in S with SIE */
  li t0, 2; csrw mideleg, t0; csrw mie, t0
  la t0, s_int; csrw stvec, t0
  li t0, 2; csrs mip, t0      /* SSIP */
  CATCH_TO(1f)
  li t0, 2; csrs mstatus, t0  /* SIE */
  GOTO_MODE(1, 2f)
2: nop
  j fail
1: CHECK(s10, 9); li t0, 0x8000000000000001; CHECKR(s7, t0)
  csrw mie, zero; csrw mideleg, zero; li t0, 2; csrc mstatus, t0
  TEST(8) /* vectored mtvec: interrupt code 1 (SSIP, not delegated) lands at base + 4 */
  la t0, vec_table; ori t0, t0, 1; csrw mtvec, t0
  li t0, 2; csrw mie, t0; csrs mip, t0; li t0, 8; csrs mstatus, t0
  nop
  j fail
vec_done:
  csrr a0, mcause; li t0, 0x8000000000000001; CHECKR(a0, t0)
  csrw mie, zero
  la t0, unexpected_trap; csrw mtvec, t0
  TEST(9) /* several pending interrupts: taken in priority order SEI, SSI, STI */
  li t0, 0x222; csrw mie, t0; csrs mip, t0
  li s7, 0
  CATCH_TO(1f); li t0, 8; csrs mstatus, t0
2: j 2b
1: li t0, 0x8000000000000009; CHECKR(s10, t0)
  li t0, 0x200; csrc mip, t0
  CATCH_TO(1f); li t0, 8; csrs mstatus, t0
2: j 2b
1: li t0, 0x8000000000000001; CHECKR(s10, t0)
  li t0, 0x2; csrc mip, t0
  CATCH_TO(1f); li t0, 8; csrs mstatus, t0
2: j 2b
1: li t0, 0x8000000000000005; CHECKR(s10, t0)
  li t0, 0x20; csrc mip, t0; csrw mie, zero
  TEST(10) /* mret to a lower mode clears MPRV; mret to M keeps it */
  li t0, 1 << 17; csrs mstatus, t0
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: ecall
1: CHECK(s10, 9); csrr a0, mstatus; li t0, 1 << 17; and a0, a0, t0; CHECK(a0, 0)
  li t0, (1 << 17) | (3 << 11); csrs mstatus, t0
  la t0, 3f; csrw mepc, t0; mret
3: csrr a0, mstatus; li t0, 1 << 17; and a0, a0, t0; CHECKR(a0, t0)
  csrc mstatus, t0
  j pass

  .align 2
s_handler: csrr s7, scause; csrr s6, sepc; ecall
  .align 2
s_int: csrr s7, scause; li t0, 2; csrc sip, t0; ecall
  .align 6
  .option push; .option norvc
vec_table: j fail; j vec_one; j fail; j fail
  .option pop
vec_one: li t0, 2; csrc mip, t0; li t0, 8; csrc mstatus, t0; j vec_done
M_CATCH
PARK_OTHERS
END
