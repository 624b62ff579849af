#include "common.h"
START
  TEST(1)
  li a0, -3; li a1, 7; mul a2, a0, a1; CHECK(a2, -21)
  li a0, 0x7fffffffffffffff; li a1, 2; mulh a2, a0, a1; CHECK(a2, 0)
  li a0, -1; li a1, -1; mulh a2, a0, a1; CHECK(a2, 0)
  mulhu a2, a0, a1; CHECK(a2, 0xfffffffffffffffe)
  li a0, -2; li a1, 3; mulhsu a2, a0, a1; CHECK(a2, -1)
  li a0, 0x80000000; li a1, 2; mulw a2, a0, a1; CHECK(a2, 0)
  li a0, 0x40000000; mulw a2, a0, a1; CHECK(a2, 0xffffffff80000000)
  TEST(2) /* division by zero */
  li a0, 42; li a1, 0
  div a2, a0, a1; CHECK(a2, -1)
  divu a2, a0, a1; CHECK(a2, -1)
  rem a2, a0, a1; CHECK(a2, 42)
  remu a2, a0, a1; CHECK(a2, 42)
  divw a2, a0, a1; CHECK(a2, -1)
  divuw a2, a0, a1; CHECK(a2, -1)
  remw a2, a0, a1; CHECK(a2, 42)
  remuw a2, a0, a1; CHECK(a2, 42)
  TEST(3) /* signed overflow */
  li a0, 0x8000000000000000; li a1, -1
  div a2, a0, a1; CHECKR(a2, a0)
  rem a2, a0, a1; CHECK(a2, 0)
  li a0, 0xffffffff80000000
  divw a2, a0, a1; CHECKR(a2, a0)
  remw a2, a0, a1; CHECK(a2, 0)
  TEST(4) /* signs */
  li a0, -7; li a1, 2
  div a2, a0, a1; CHECK(a2, -3)
  rem a2, a0, a1; CHECK(a2, -1)
  divu a2, a0, a1; CHECK(a2, 0x7ffffffffffffffc)
  li a0, 0xfffffff9; divuw a2, a0, a1; CHECK(a2, 0x7ffffffc)
  remuw a2, a0, a1; CHECK(a2, 1)
  li a0, 0x1fffffff9; divw a2, a0, a1; CHECK(a2, -3)
  j pass
PARK_OTHERS
END
