#include "common.h"
START
  TEST(1) /* the six Zicsr forms */
  li a0, 0x1234; csrw mscratch, a0; csrr a1, mscratch; CHECK(a1, 0x1234)
  li t1, 0xf0; csrrs a1, mscratch, t1; CHECK(a1, 0x1234); csrr a1, mscratch; CHECK(a1, 0x12f4)
  csrrc a1, mscratch, t1; CHECK(a1, 0x12f4); csrr a1, mscratch; CHECK(a1, 0x1204)
  csrrwi a1, mscratch, 5; CHECK(a1, 0x1204)
  csrrsi a1, mscratch, 2; CHECK(a1, 5)
  csrrci a1, mscratch, 1; CHECK(a1, 7); csrr a1, mscratch; CHECK(a1, 6)
  TEST(2) /* writing a read-only CSR is illegal, mtval = instruction bits */
  CATCH_TO(1f)
2: csrw mvendorid, a0
  j fail
1: CHECK(s10, 2); la t0, 2b; lwu t0, 0(t0); CHECKR(s11, t0)
  CATCH_TO(1f)
  csrrs a0, mhartid, zero   /* reading one with rs1 = x0 is fine */
  csrrsi a0, mhartid, 0
  li s10, 0
1: CHECK(s10, 0)
  TEST(3) /* unknown CSRs and odd pmpcfg on RV64 trap */
  CATCH_TO(1f)
2: csrr a0, 0x7c0
  j fail
1: CHECK(s10, 2); la t0, 2b; lwu t0, 0(t0); CHECKR(s11, t0)
  CATCH_TO(1f)
  csrr a0, 0x3a1
  j fail
1: CHECK(s10, 2)
  CATCH_TO(1f)
  csrr a0, 0x7a0  /* tselect: no triggers */
  j fail
1: CHECK(s10, 2)
  TEST(4) /* identification */
  csrr a0, misa; li t1, 0x800000000014112d; CHECKR(a0, t1)
  csrr a0, mvendorid; CHECK(a0, 0)
  csrr a0, marchid; CHECK(a0, 0)
  csrr a0, mimpid; CHECK(a0, 0)
  csrr a0, mhartid; CHECK(a0, 0)
  csrr a0, mstatus; srli a0, a0, 32; andi a0, a0, 0xf; CHECK(a0, 0xa)
  TEST(5) /* PMP WARL */
  la t0, unexpected_trap; csrw mtvec, t0
  li a0, -1; csrw pmpaddr0, a0; csrr a1, pmpaddr0; li t1, 0x3fffffffffffff; CHECKR(a1, t1)
  li a0, 0x1f; csrw pmpcfg0, a0; csrr a1, pmpcfg0; CHECK(a1, 0x1f)
  li a0, 0x02; csrw pmpcfg0, a0; csrr a1, pmpcfg0; CHECK(a1, 0)
  li a0, 0x9f00; csrw pmpcfg0, a0; li a0, 0x1234; csrw pmpaddr1, a0; csrr a1, pmpaddr1; CHECK(a1, 0)
  csrw pmpcfg0, zero; csrr a1, pmpcfg0; CHECK(a1, 0x9f00)
  csrw pmpaddr63, a0; csrr a1, pmpaddr63; CHECK(a1, 0x1234)
  csrw pmpcfg14, a0; csrr a1, pmpcfg14; CHECK(a1, 0x1014)
  PMP_ALLOW_ALL /* entry 1 stays locked; entry 0 lets U/S run again */
  TEST(6) /* counters tick; hpm counters read 0 */
  csrr a0, cycle; csrr a1, instret; nop; nop; csrr a2, instret; bleu a2, a1, fail
  csrr a0, time; li t0, 10000; 3: addi t0, t0, -1; bnez t0, 3b; csrr a1, time; bleu a1, a0, fail
  csrr a0, hpmcounter3; CHECK(a0, 0)
  csrw mhpmcounter3, t0; csrr a0, mhpmcounter3; CHECK(a0, 0)
  li a0, 1000; csrw minstret, a0; csrr a1, minstret; li t1, 1010; bgeu a1, t1, fail; bltu a1, a0, fail
  TEST(7) /* U-mode counter access gated by mcounteren and scounteren */
  csrw mcounteren, zero; csrw scounteren, zero
  CATCH_TO(1f)
  GOTO_MODE(0, 2f)
2: csrr a0, time
  ecall
1: CHECK(s10, 2)
  li t0, 7; csrw mcounteren, t0
  CATCH_TO(1f)
  GOTO_MODE(0, 2f)
2: csrr a0, cycle
  ecall
1: CHECK(s10, 2)
  li t0, 7; csrw scounteren, t0
  CATCH_TO(1f)
  GOTO_MODE(0, 2f)
2: csrr a0, cycle; csrr a0, time; csrr a0, instret
  ecall
1: CHECK(s10, 8)
  csrw mcounteren, zero
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: csrr a0, time
  ecall
1: CHECK(s10, 2)
  TEST(8) /* menvcfg: only STCE; stimecmp reachable from M (Sstc probe) */
  li a0, -1; csrw menvcfg, a0; csrr a1, menvcfg; li t1, 0x8000000000000000; CHECKR(a1, t1)
  csrw stimecmp, a0; csrr a1, stimecmp; CHECK(a1, -1)
  TEST(9) /* satp: unsupported MODE writes are ignored */
  li a0, (8 << 60) | 0x80010; csrw satp, a0; csrr a1, satp; CHECKR(a1, a0)
  li a2, (10 << 60) | 0x80020; csrw satp, a2; csrr a1, satp; CHECKR(a1, a0)
  li a2, (1 << 60) | 0x80020; csrw satp, a2; csrr a1, satp; CHECKR(a1, a0)
  li a2, (9 << 60) | 0x80030; csrw satp, a2; csrr a1, satp; CHECKR(a1, a2)
  csrw satp, zero; csrr a1, satp; CHECK(a1, 0)
  TEST(10) /* xtvec WARL mode, xepc low bit */
  la a0, m_catch; ori a1, a0, 2; csrw mtvec, a1; csrr a2, mtvec; CHECKR(a2, a0)
  li a0, 0x80000003; csrw mepc, a0; csrr a1, mepc; CHECK(a1, 0x80000002)
  TEST(11) /* sstatus/sie/sip are views */
  li a0, 1 << 18; csrs sstatus, a0; csrr a1, mstatus; and a1, a1, a0; CHECKR(a1, a0)
  csrc mstatus, a0; csrr a1, sstatus; and a1, a1, a0; CHECK(a1, 0)
  li a0, 0x222; csrw mideleg, a0; csrr a1, mideleg; CHECK(a1, 0x222)
  li a0, 0xaaa; csrw mie, a0; csrr a1, sie; CHECK(a1, 0x222)
  csrw sie, zero; csrr a1, mie; CHECK(a1, 0x888)
  csrw mie, zero
  li a0, 2; csrs sip, a0; csrr a1, mip; andi a1, a1, 2; CHECK(a1, 2)
  csrc mip, a0; csrr a1, sip; andi a1, a1, 2; CHECK(a1, 0)
  csrw mideleg, zero
  li a0, -1; csrw medeleg, a0; csrr a1, medeleg; CHECK(a1, 0xb3ff); csrw medeleg, zero
  TEST(12) /* Sstc: S reaches stimecmp only with menvcfg.STCE and mcounteren.TM; U never */
  csrw menvcfg, zero; li t0, 2; csrw mcounteren, t0
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: csrr a0, stimecmp
  ecall
1: CHECK(s10, 2)
  li t0, 1; slli t0, t0, 63; csrw menvcfg, t0; csrw mcounteren, zero
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: csrr a0, stimecmp
  ecall
1: CHECK(s10, 2)
  li t0, 2; csrw mcounteren, t0; csrw scounteren, t0
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: li a0, -1; csrw stimecmp, a0; csrr a0, stimecmp
  ecall
1: CHECK(s10, 9); CHECK(a0, -1)
  CATCH_TO(1f)
  GOTO_MODE(0, 2f)
2: csrr a0, stimecmp
  ecall
1: CHECK(s10, 2)
  TEST(13) /* scounteren gates U only: S reads counters with it clear */
  li t0, 7; csrw mcounteren, t0; csrw scounteren, zero
  CATCH_TO(1f)
  GOTO_MODE(1, 2f)
2: csrr a0, cycle; csrr a0, time; csrr a0, instret
  ecall
1: CHECK(s10, 9)
  csrw mcounteren, zero; csrw menvcfg, zero
  j pass
M_CATCH
PARK_OTHERS
END
