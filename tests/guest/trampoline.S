/* Real-mode start of the application processors. The BSP copies ap_trampoline_start..end to
 * TRAMPOLINE_PHYS (below 1 MiB, identity-mapped), fills the cr3/cr4/stacks/entry words of the
 * copy and sends INIT-SIPI-SIPI. Each AP takes a ticket (its processor number), enables
 * protected mode and paging, takes its stack and calls ap_entry(number). */
#include "guest.h"

#define TRAMP(label) ((label) - ap_trampoline_start + TRAMPOLINE_PHYS)

  .text
  .p2align 4
  .code16
  .globl ap_trampoline_start
ap_trampoline_start:
  cli
  cld
  movw %cs, %ax
  movw %ax, %ds
  lgdtl ap_trampoline_gdtr - ap_trampoline_start
  movl %cr0, %eax
  orl $1, %eax
  movl %eax, %cr0
  ljmpl $SEL_CODE, $TRAMP(ap_trampoline_32)

  .code32
ap_trampoline_32:
  movw $SEL_DATA, %ax
  movw %ax, %ds
  movw %ax, %es
  movw %ax, %ss
  movl TRAMP(ap_trampoline_cr4), %eax
  movl %eax, %cr4
  movl TRAMP(ap_trampoline_cr3), %eax
  movl %eax, %cr3
  movl %cr0, %eax
  orl $0x80010000, %eax
  movl %eax, %cr0
  movl $1, %eax
  lock xaddl %eax, TRAMP(ap_trampoline_ticket)
  cmpl $MAX_CPUS, %eax
  jae ap_trampoline_park
  movl %eax, %ebx
  incl %eax
  imull $STACK_SIZE, %eax
  addl TRAMP(ap_trampoline_stacks), %eax
  movl %eax, %esp
  pushl %ebx
  movl TRAMP(ap_trampoline_entry), %eax
  call *%eax
ap_trampoline_park:
  cli
  hlt
  jmp ap_trampoline_park

  .p2align 3
ap_trampoline_gdt:
  .quad 0
  .quad 0x00CF9A000000FFFF /* 0x08: flat code */
  .quad 0x00CF92000000FFFF /* 0x10: flat data */
ap_trampoline_gdtr:
  .word 23
  .long TRAMP(ap_trampoline_gdt)
  .p2align 2
  .globl ap_trampoline_cr3, ap_trampoline_cr4, ap_trampoline_stacks, ap_trampoline_ticket
  .globl ap_trampoline_entry
ap_trampoline_cr3: .long 0
ap_trampoline_cr4: .long 0
ap_trampoline_stacks: .long 0
ap_trampoline_ticket: .long 0
ap_trampoline_entry: .long 0
  .globl ap_trampoline_end
ap_trampoline_end:
