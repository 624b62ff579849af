/* pause/resume and state tests: hart 0 counts in `counter` forever and
   copies mtime into `last_time`; every other hart sleeps in WFI with no
   interrupt enabled (only a kick from the host can move it). */
  .section .text.init
  .globl _start
_start:
  la t0, counter
  la t2, last_time
  li t3, 0x0200bff8
  bnez a0, 2f
1: ld t1, 0(t0)
  addi t1, t1, 1
  sd t1, 0(t0)
  ld t4, 0(t3)
  sd t4, 0(t2)
  j 1b
2: wfi
  j 2b

  .section .tohost, "aw"
  .globl tohost, fromhost
  .align 6
tohost: .dword 0
  .align 6
fromhost: .dword 0

  .data
  .align 3
  .globl counter, last_time
counter: .dword 0
last_time: .dword 0
