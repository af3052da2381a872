/* Interrupt and exception entry stubs: 256 stubs of 16 bytes each at isr_stubs + 16 * vector.
 * Each pushes an error code (a dummy one where the CPU pushes none) and the vector, then
 * isr_common saves the registers and calls isr_dispatch(struct isr_frame*). */
#include "guest.h"

  .text
  .code32
  .p2align 4
  .globl isr_stubs
isr_stubs:
  .set vector, 0
  .rept 256
  .p2align 4
  .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
  pushl $vector
  .else
  pushl $0
  pushl $vector
  .endif
  jmp isr_common
  .set vector, vector + 1
  .endr

isr_common:
  pushal
  cld
  movl %esp, %eax
  pushl %eax
  call isr_dispatch
  addl $4, %esp
  popal
  addl $8, %esp
  iretl
