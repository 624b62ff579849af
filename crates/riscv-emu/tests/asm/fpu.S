#include "common.h"
#define FLI_S(f, bits) li t5, bits; fmv.w.x f, t5
#define FLI_D(f, bits) li t5, bits; fmv.d.x f, t5
#define CHECK_S(f, bits) fmv.x.w t5, f; slli t5, t5, 32; srli t5, t5, 32; li t6, bits; bne t5, t6, fail
#define CHECK_D(f, bits) fmv.x.d t5, f; li t6, bits; bne t5, t6, fail
#define CHECK_FLAGS(v) csrrw t5, fflags, zero; li t6, v; bne t5, t6, fail
#define NV 16
#define DZ 8
#define OF 4
#define UF 2
#define NX 1
START
  li t0, 1 << 13; csrs mstatus, t0
  csrw fcsr, zero
  TEST(1) /* static rounding modes on a tie: 1 + 2^-24 in single */
  FLI_S(f1, 0x3f800000); FLI_S(f2, 0x33800000)
  fadd.s f3, f1, f2, rne; CHECK_S(f3, 0x3f800000); CHECK_FLAGS(NX)
  fadd.s f3, f1, f2, rtz; CHECK_S(f3, 0x3f800000); CHECK_FLAGS(NX)
  fadd.s f3, f1, f2, rdn; CHECK_S(f3, 0x3f800000); CHECK_FLAGS(NX)
  fadd.s f3, f1, f2, rup; CHECK_S(f3, 0x3f800001); CHECK_FLAGS(NX)
  fadd.s f3, f1, f2, rmm; CHECK_S(f3, 0x3f800001); CHECK_FLAGS(NX)
  fneg.s f4, f2
  fsub.s f3, f1, f4, rdn; CHECK_S(f3, 0x3f800000); CHECK_FLAGS(NX)
  fadd.s f3, f1, f1; CHECK_S(f3, 0x40000000); CHECK_FLAGS(0)
  TEST(2) /* dynamic rounding through frm; reserved modes are illegal */
  csrwi frm, 3
  fadd.s f3, f1, f2; CHECK_S(f3, 0x3f800001); CHECK_FLAGS(NX)
  csrr a0, fcsr; CHECK(a0, 3 << 5)
  csrwi frm, 5
  CATCH_TO(1f)
  fadd.s f3, f1, f2
  j fail
1: CHECK(s10, 2)
  csrwi frm, 0
  CATCH_TO(1f)
2: .word 0x0020d053     /* fadd.s ft0, ft1, ft2 with rm = 5 */
  j fail
1: CHECK(s10, 2); CHECK(s11, 0x0020d053)
  la t0, unexpected_trap; csrw mtvec, t0
  TEST(3) /* division by zero, invalid, overflow, underflow */
  FLI_S(f5, 0)
  fdiv.s f3, f1, f5; CHECK_S(f3, 0x7f800000); CHECK_FLAGS(DZ)
  fdiv.s f3, f5, f5; CHECK_S(f3, 0x7fc00000); CHECK_FLAGS(NV)
  FLI_S(f6, 0x7f7fffff)
  fmul.s f3, f6, f6; CHECK_S(f3, 0x7f800000); CHECK_FLAGS(OF | NX)
  fmul.s f3, f6, f6, rtz; CHECK_S(f3, 0x7f7fffff); CHECK_FLAGS(OF | NX)
  FLI_S(f7, 0x00000001); FLI_S(f8, 0x3f000000)
  fmul.s f3, f7, f8; CHECK_S(f3, 0); CHECK_FLAGS(UF | NX)
  FLI_S(f7, 0x00800000)
  fmul.s f3, f7, f8; CHECK_S(f3, 0x00400000); CHECK_FLAGS(0)
  FLI_D(f9, 0xbff0000000000000)
  fsqrt.d f3, f9; CHECK_D(f3, 0x7ff8000000000000); CHECK_FLAGS(NV)
  FLI_D(f9, 0x4010000000000000)
  fsqrt.d f3, f9; CHECK_D(f3, 0x4000000000000000); CHECK_FLAGS(0)
  TEST(4) /* NaN boxing */
  li t0, 0x000000003f800000; fmv.d.x f10, t0   /* not boxed */
  fadd.s f3, f10, f1; CHECK_S(f3, 0x7fc00000); CHECK_FLAGS(0)
  fmv.x.w a0, f10; CHECK(a0, 0x3f800000)
  la t0, fdata; flw f11, 0(t0); fmv.x.d a0, f11; CHECK(a0, 0xffffffff3f800000)
  fsw f11, 8(t0); lwu a0, 8(t0); CHECK(a0, 0x3f800000)
  FLI_S(f12, 0xbf800000); fmv.x.w a0, f12; CHECK(a0, 0xffffffffbf800000)
  fsgnj.s f3, f10, f1; CHECK_S(f3, 0x7fc00000)
  TEST(5) /* fmin/fmax */
  FLI_S(f13, 0x80000000)
  fmin.s f3, f13, f5; CHECK_S(f3, 0x80000000)
  fmax.s f3, f13, f5; CHECK_S(f3, 0)
  FLI_S(f14, 0x7fc00000)
  fmin.s f3, f14, f1; CHECK_S(f3, 0x3f800000); CHECK_FLAGS(0)
  FLI_S(f15, 0x7f800001)
  fmax.s f3, f15, f1; CHECK_S(f3, 0x3f800000); CHECK_FLAGS(NV)
  fmax.s f3, f14, f15; CHECK_S(f3, 0x7fc00000); CHECK_FLAGS(NV)
  TEST(6) /* fclass */
  fclass.s a0, f13; CHECK(a0, 1 << 3)
  fclass.s a0, f5; CHECK(a0, 1 << 4)
  fclass.s a0, f1; CHECK(a0, 1 << 6)
  fclass.s a0, f12; CHECK(a0, 1 << 1)
  FLI_S(f3, 0x00000001); fclass.s a0, f3; CHECK(a0, 1 << 5)
  FLI_S(f3, 0x80000001); fclass.s a0, f3; CHECK(a0, 1 << 2)
  FLI_S(f3, 0xff800000); fclass.s a0, f3; CHECK(a0, 1 << 0)
  FLI_S(f3, 0x7f800000); fclass.s a0, f3; CHECK(a0, 1 << 7)
  fclass.s a0, f15; CHECK(a0, 1 << 8)
  fclass.s a0, f14; CHECK(a0, 1 << 9)
  fclass.s a0, f10; CHECK(a0, 1 << 9)
  FLI_D(f3, 0x8000000000000000); fclass.d a0, f3; CHECK(a0, 1 << 3)
  TEST(7) /* conversions to integer */
  FLI_S(f3, 0x40600000)  /* 3.5 */
  fcvt.w.s a0, f3, rne; CHECK(a0, 4); CHECK_FLAGS(NX)
  fcvt.w.s a0, f3, rtz; CHECK(a0, 3); CHECK_FLAGS(NX)
  fcvt.w.s a0, f12, rtz; CHECK(a0, -1); CHECK_FLAGS(0)
  FLI_S(f3, 0xff800000); fcvt.w.s a0, f3; CHECK(a0, 0xffffffff80000000); CHECK_FLAGS(NV)
  fcvt.w.s a0, f14; CHECK(a0, 0x7fffffff); CHECK_FLAGS(NV)
  FLI_S(f3, 0x501502f9); fcvt.w.s a0, f3; CHECK(a0, 0x7fffffff); CHECK_FLAGS(NV)
  fcvt.wu.s a0, f12; CHECK(a0, 0); CHECK_FLAGS(NV)
  fcvt.wu.s a0, f3; CHECK(a0, -1); CHECK_FLAGS(NV)
  fcvt.l.s a0, f3; CHECK(a0, 10000000000); CHECK_FLAGS(0)
  fcvt.lu.s a0, f14; CHECK(a0, -1); CHECK_FLAGS(NV)
  FLI_D(f3, 0xc1e0000000000000); fcvt.w.d a0, f3; CHECK(a0, 0xffffffff80000000); CHECK_FLAGS(0)
  FLI_D(f3, 0xbfe0000000000000); fcvt.wu.d a0, f3, rtz; CHECK(a0, 0); CHECK_FLAGS(NX)
  fcvt.l.d a0, f3, rdn; CHECK(a0, -1); CHECK_FLAGS(NX)
  fcvt.l.d a0, f3, rmm; CHECK(a0, -1); CHECK_FLAGS(NX)
  fcvt.l.d a0, f3, rne; CHECK(a0, 0); CHECK_FLAGS(NX)
  TEST(8) /* conversions from integer and between formats */
  li a0, -7; fcvt.s.w f3, a0; CHECK_S(f3, 0xc0e00000); CHECK_FLAGS(0)
  li a0, 0x20000000000001; fcvt.d.l f3, a0; CHECK_D(f3, 0x4340000000000000); CHECK_FLAGS(NX)
  fcvt.d.l f3, a0, rup; CHECK_D(f3, 0x4340000000000001); CHECK_FLAGS(NX)
  li a0, -1; fcvt.s.wu f3, a0; CHECK_S(f3, 0x4f800000); CHECK_FLAGS(NX)
  fcvt.d.lu f3, a0; CHECK_D(f3, 0x43f0000000000000); CHECK_FLAGS(NX)
  FLI_D(f3, 0x3ff0000010000000); fcvt.s.d f4, f3; CHECK_S(f4, 0x3f800000); CHECK_FLAGS(NX)
  fcvt.s.d f4, f3, rup; CHECK_S(f4, 0x3f800001); CHECK_FLAGS(NX)
  fcvt.d.s f4, f15; CHECK_D(f4, 0x7ff8000000000000); CHECK_FLAGS(NV)
  fcvt.d.s f4, f12; CHECK_D(f4, 0xbff0000000000000); CHECK_FLAGS(0)
  FLI_D(f3, 0x47efffffffffffff); fcvt.s.d f4, f3; CHECK_S(f4, 0x7f800000); CHECK_FLAGS(OF | NX)
  TEST(9) /* fused multiply-add rounds once */
  FLI_D(f1, 0x3ff0000000400000); FLI_D(f2, 0xbff0000000000000)
  fmadd.d f3, f1, f1, f2; CHECK_D(f3, 0x3e20000000200000); CHECK_FLAGS(0)
  fmul.d f4, f1, f1; fadd.d f4, f4, f2; CHECK_D(f4, 0x3e20000000000000); CHECK_FLAGS(NX)
  fmsub.d f3, f1, f1, f2; CHECK_D(f3, 0x4000000000400000); CHECK_FLAGS(NX)
  fnmadd.d f3, f1, f1, f2; CHECK_D(f3, 0xbe20000000200000); CHECK_FLAGS(0)
  fnmsub.d f3, f1, f1, f2; CHECK_D(f3, 0xc000000000400000); CHECK_FLAGS(NX)
  FLI_S(f1, 0x7f800000); FLI_S(f2, 0); FLI_S(f3, 0x7fc00000)
  fmadd.s f4, f1, f2, f3; CHECK_S(f4, 0x7fc00000); CHECK_FLAGS(NV)
  FLI_S(f1, 0x3f800000); FLI_S(f2, 0xbf800000)
  fmadd.s f4, f1, f2, f1, rdn; CHECK_S(f4, 0x80000000)
  fmadd.s f4, f1, f2, f1; CHECK_S(f4, 0)
  TEST(10) /* comparisons */
  FLI_S(f1, 0x3f800000)
  feq.s a0, f14, f1; CHECK(a0, 0); CHECK_FLAGS(0)
  feq.s a0, f15, f1; CHECK(a0, 0); CHECK_FLAGS(NV)
  flt.s a0, f14, f1; CHECK(a0, 0); CHECK_FLAGS(NV)
  fle.s a0, f13, f5; CHECK(a0, 1)
  flt.s a0, f13, f5; CHECK(a0, 0)
  feq.s a0, f13, f5; CHECK(a0, 1)
  flt.s a0, f12, f1; CHECK(a0, 1)
  TEST(11) /* sign injection */
  fsgnj.s f3, f1, f12; CHECK_S(f3, 0xbf800000)
  fsgnjn.s f3, f1, f12; CHECK_S(f3, 0x3f800000)
  fsgnjx.s f3, f12, f12; CHECK_S(f3, 0x3f800000)
  FLI_D(f3, 0x3ff0000000000000); fneg.d f4, f3; CHECK_D(f4, 0xbff0000000000000)
  fabs.d f4, f4; CHECK_D(f4, 0x3ff0000000000000)
  TEST(12) /* fflags accrue; fcsr composes frm and fflags */
  csrw fcsr, zero
  fdiv.s f3, f1, f5
  fdiv.s f3, f5, f5
  csrr a0, fflags; CHECK(a0, DZ | NV)
  li a0, 0xff; csrw fcsr, a0; csrr a1, frm; CHECK(a1, 7); csrr a1, fflags; CHECK(a1, 0x1f)
  csrw fcsr, zero
  j pass
M_CATCH
PARK_OTHERS
END
  .align 3
fdata: .word 0x3f800000, 0, 0, 0
