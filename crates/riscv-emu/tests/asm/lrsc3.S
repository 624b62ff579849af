#include "common.h"
/* Two harts, reservations broken by the other hart's stores even when the
   value does not change (ABA): hart 1 reserves `word` with LR, hart 0
   stores, hart 1's SC reports the outcome. Flags live in other 8-byte
   granules of the same page, so hart 0's flag stores are themselves
   stores to the reserved page that must NOT break the reservation.
     phase 1: hart 0 stores the same doubleword value -> SC fails
     phase 2: hart 0 stores elsewhere on the page      -> SC succeeds
     phase 3: hart 0 stores an unchanged byte of it    -> SC fails  */
#define FLAG(n) (8 * (n))
START
  la s0, shared
  TEST(1)
1: ld t0, FLAG(1)(s0); beqz t0, 1b
  li t1, 5; sd t1, 0(s0)                  /* same value as before */
  li t1, 1; sd t1, FLAG(2)(s0)
2: ld t0, FLAG(4)(s0); beqz t0, 2b
  ld t0, FLAG(3)(s0); CHECK(t0, 1)        /* SC failed */
  ld t0, 0(s0); CHECK(t0, 5)
  TEST(2)
3: ld t0, FLAG(5)(s0); beqz t0, 3b
  li t1, 1; sd t1, FLAG(16)(s0)           /* another granule, same page */
  sd t1, FLAG(6)(s0)
4: ld t0, FLAG(8)(s0); beqz t0, 4b
  ld t0, FLAG(7)(s0); CHECK(t0, 0)        /* SC succeeded */
  ld t0, 0(s0); CHECK(t0, 9)
  TEST(3)
5: ld t0, FLAG(9)(s0); beqz t0, 5b
  sb zero, 7(s0)                          /* byte 7 of 9 is already 0 */
  li t1, 1; sd t1, FLAG(10)(s0)
6: ld t0, FLAG(12)(s0); beqz t0, 6b
  ld t0, FLAG(11)(s0); CHECK(t0, 1)
  ld t0, 0(s0); CHECK(t0, 9)
  j pass
other_harts:
  la s0, shared
  li t1, 1
  csrr t2, mhartid; bne t2, t1, park
  lr.d a0, (s0)
  sd t1, FLAG(1)(s0)
1: ld t0, FLAG(2)(s0); beqz t0, 1b
  li a1, 7; sc.d t3, a1, (s0)
  sd t3, FLAG(3)(s0); sd t1, FLAG(4)(s0)
  lr.d a0, (s0)
  sd t1, FLAG(5)(s0)
2: ld t0, FLAG(6)(s0); beqz t0, 2b
  li a1, 9; sc.d t3, a1, (s0)
  sd t3, FLAG(7)(s0); sd t1, FLAG(8)(s0)
  lr.d a0, (s0)
  sd t1, FLAG(9)(s0)
3: ld t0, FLAG(10)(s0); beqz t0, 3b
  li a1, 11; sc.d t3, a1, (s0)
  sd t3, FLAG(11)(s0); sd t1, FLAG(12)(s0)
park: wfi; j park
END
  .align 12
shared: .dword 5
  .space 4088
