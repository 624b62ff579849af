/* Shared test scaffolding: gp holds the current test number; FAIL exits
   through HTIF with code (gp), PASS with 0. Unexpected traps exit with
   0x400 + mcause. */
#define TEST(n) li gp, n
#define CHECK(reg, val) li t6, val; bne reg, t6, fail
#define CHECKR(reg, reg2) bne reg, reg2, fail

/* PMP entry 0: all memory RWX, so that S and U mode may run (as firmware sets up). */
#define PMP_ALLOW_ALL li t0, -1; csrw pmpaddr0, t0; li t0, 0x1f; csrw pmpcfg0, t0

#define START \
  .section .text.init; .globl _start; _start: \
  csrr t0, mhartid; bnez t0, other_harts; \
  la t0, unexpected_trap; csrw mtvec, t0; \
  PMP_ALLOW_ALL; \
  la sp, stack_top; li gp, 0;

#define END \
pass: li a0, 1; la t0, tohost; sd a0, 0(t0); 1: j 1b; \
fail: slli a0, gp, 1; ori a0, a0, 1; la t0, tohost; sd a0, 0(t0); 1: j 1b; \
  .align 2; \
unexpected_trap: csrr a0, mcause; bltz a0, 2f; addi a0, a0, 0x400; 3: slli a0, a0, 1; ori a0, a0, 1; \
  la t0, tohost; sd a0, 0(t0); 1: j 1b; \
2: slli a0, a0, 1; srli a0, a0, 1; addi a0, a0, 0x500; j 3b; \
  .section .tohost, "aw"; .align 6; .globl tohost; tohost: .dword 0; .align 6; .globl fromhost; fromhost: .dword 0; \
  .data; .align 12; stack: .space 8192; stack_top: ;

/* Harts other than 0 park unless the test defines its own entry. */
#define PARK_OTHERS other_harts: wfi; j other_harts;

/* Drop to privilege `mode` at `label` (via mret). */
#define GOTO_MODE(mode, label) li t0, 3 << 11; csrc mstatus, t0; li t0, (mode) << 11; csrs mstatus, t0; la t0, label; csrw mepc, t0; mret
/* M-mode catcher: s10 = mcause, s11 = mtval, s8 = mepc, continue at s9 in M mode. */
#define CATCH_TO(label) la t0, m_catch; csrw mtvec, t0; la s9, label; li s10, -1
#define M_CATCH .align 2; m_catch: csrr s10, mcause; csrr s11, mtval; csrr s8, mepc; jr s9
