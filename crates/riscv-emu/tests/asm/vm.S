#include "common.h"
#define MKPTR(dst, table) la dst, table; srli dst, dst, 12; slli dst, dst, 10; ori dst, dst, 1
#define MKLEAF(dst, page, flags) la dst, page; srli dst, dst, 12; slli dst, dst, 10; ori dst, dst, flags
#define S_STEP(...) CATCH_TO(1f); GOTO_MODE(1, 2f); 2: __VA_ARGS__; ecall; 1:
START
  TEST(1) /* build Sv39 tables: gigapage identity for 0x80000000, 4K pages at 0x40000000 */
  la a0, pt_root
  li t0, (0x80000 << 10) | 0xcf; sd t0, 16(a0)
  MKPTR(t1, pt_l1); sd t1, 8(a0)
  la a1, pt_l1; MKPTR(t1, pt_l0); sd t1, 0(a1)
  la a2, pt_l0
  MKLEAF(t1, pageA, 0x07); sd t1, 0(a2)
  MKLEAF(t1, pageR, 0x43); sd t1, 8(a2)
  sd zero, 16(a2)
  MKLEAF(t1, pageU, 0xd7); sd t1, 24(a2)
  MKLEAF(t1, pageX, 0x49); sd t1, 32(a2)
  li t0, 0x1111; la t1, pageA; sd t0, 0(t1)
  li t0, 0x2222; la t1, pageB; sd t0, 0(t1)
  li t0, 0x3333; la t1, pageU; sd t0, 0(t1)
  li t0, 0x4444; la t1, pageX; sd t0, 0(t1)
  la t0, pt_root; srli t0, t0, 12; li t1, 8 << 60; or t0, t0, t1; csrw satp, t0
  TEST(2) /* load sets A only */
  S_STEP(li t1, 0x40000000; ld s5, 0(t1))
  CHECK(s10, 9); CHECK(s5, 0x1111)
  ld t1, 0(a2); andi t1, t1, 0xc0; CHECK(t1, 0x40)
  TEST(3) /* store sets D */
  S_STEP(li t1, 0x40000000; li t2, 0x5555; sd t2, 8(t1))
  CHECK(s10, 9)
  ld t1, 0(a2); andi t1, t1, 0xc0; CHECK(t1, 0xc0)
  la t1, pageA; ld t1, 8(t1); CHECK(t1, 0x5555)
  TEST(4) /* store to a read-only page: store page fault, mtval = va */
  S_STEP(li t1, 0x40001010; sd t1, 0(t1))
  CHECK(s10, 15); CHECK(s11, 0x40001010)
  TEST(5) /* invalid PTE: load page fault */
  S_STEP(li t1, 0x40002008; ld t1, 0(t1))
  CHECK(s10, 13); CHECK(s11, 0x40002008)
  TEST(6) /* U page from S: fault without SUM, fine with SUM */
  S_STEP(li t1, 0x40003000; ld s5, 0(t1))
  CHECK(s10, 13); CHECK(s11, 0x40003000)
  li t0, 1 << 18; csrs mstatus, t0
  S_STEP(li t1, 0x40003000; ld s5, 0(t1))
  CHECK(s10, 9); CHECK(s5, 0x3333)
  li t0, 1 << 18; csrc mstatus, t0
  TEST(7) /* fetch from a non-executable page: instruction page fault */
  S_STEP(li t1, 0x40000000; jr t1)
  CHECK(s10, 12); CHECK(s11, 0x40000000)
  TEST(8) /* execute-only page: load faults unless MXR */
  S_STEP(li t1, 0x40004000; ld s5, 0(t1))
  CHECK(s10, 13)
  li t0, 1 << 19; csrs mstatus, t0
  S_STEP(li t1, 0x40004000; ld s5, 0(t1))
  CHECK(s10, 9); CHECK(s5, 0x4444)
  li t0, 1 << 19; csrc mstatus, t0
  TEST(9) /* remap and sfence.vma */
  S_STEP(li t1, 0x40000000; ld s5, 0(t1))
  CHECK(s5, 0x1111)
  MKLEAF(t1, pageB, 0xc7); sd t1, 0(a2)
  S_STEP(sfence.vma; li t1, 0x40000000; ld s5, 0(t1))
  CHECK(s10, 9); CHECK(s5, 0x2222)
  TEST(10) /* non-canonical Sv39 address */
  S_STEP(li t1, 0x8000000000; ld s5, 0(t1))
  CHECK(s10, 13)
  TEST(11) /* M mode with MPRV and MPP = S translates data accesses */
  li t0, 3 << 11; csrc mstatus, t0; li t0, (1 << 11) | (1 << 17); csrs mstatus, t0
  li t1, 0x40000000; ld s5, 0(t1)
  li t0, 1 << 17; csrc mstatus, t0
  CHECK(s5, 0x2222)
  TEST(12) /* Sv48: root48[0] and root48[1] both point at the Sv39 root */
  la a3, root48; MKPTR(t1, pt_root); sd t1, 0(a3); sd t1, 8(a3)
  la t0, root48; srli t0, t0, 12; li t1, 9 << 60; or t0, t0, t1; csrw satp, t0
  csrr t1, satp; CHECKR(t1, t0)
  S_STEP(li t1, 0x8040000000; ld s5, 0(t1))
  CHECK(s10, 9); CHECK(s5, 0x2222)
  S_STEP(li t1, 0x40002000; ld s5, 0(t1))
  CHECK(s10, 13); CHECK(s11, 0x40002000)
  S_STEP(li t1, 0x1000000000000; ld s5, 0(t1))
  CHECK(s10, 13)
  TEST(13) /* superpage with misaligned PPN faults */
  la a0, pt_root; li t0, (0x80001 << 10) | 0xcf; sd t0, 24(a0)   /* VA 0xC0000000 */
  S_STEP(sfence.vma; li t1, 0xC0000000; ld s5, 0(t1))
  CHECK(s10, 13)
  TEST(14) /* sfence.vma with an address drops that page's translation */
  la a0, pt_root; la t0, pt_root; srli t0, t0, 12; li t1, 8 << 60; or t0, t0, t1; csrw satp, t0
  MKLEAF(t1, pageA, 0xc7); sd t1, 0(a2)
  S_STEP(sfence.vma; li t1, 0x40000000; ld s5, 0(t1))
  CHECK(s10, 9); CHECK(s5, 0x1111)
  MKLEAF(t1, pageB, 0xc7); sd t1, 0(a2)
  S_STEP(li t1, 0x40000000; sfence.vma t1, zero; ld s5, 0(t1))
  CHECK(s10, 9); CHECK(s5, 0x2222)
  csrw satp, zero
  j pass
M_CATCH
PARK_OTHERS
END
  .align 12
pt_root: .space 4096
pt_l1: .space 4096
pt_l0: .space 4096
root48: .space 4096
pageA: .space 4096
pageB: .space 4096
pageR: .space 4096
pageU: .space 4096
pageX: .space 4096
