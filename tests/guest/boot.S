/* Multiboot header and the identity-mapped boot stub: zero BSS, build the page tables
 * (boot_paging.c), enable paging and jump to kernel_main at its 0x801xxxxx address. */
#include "guest.h"

#define MULTIBOOT_MAGIC 0x1BADB002
#define MULTIBOOT_FLAGS 0x00000003 /* page-aligned modules, memory info; ELF layout */

  .section .multiboot, "a"
  .p2align 2
  .long MULTIBOOT_MAGIC
  .long MULTIBOOT_FLAGS
  .long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

  .section .boot.text, "ax"
  .code32
  .globl guest_entry
guest_entry:
  cli
  cld
  movl %eax, %ebp /* multiboot magic */
  movl %ebx, %esi /* multiboot info, physical */
  xorl %eax, %eax
  movl $boot_bss_start, %edi
  movl $boot_bss_end, %ecx
  subl %edi, %ecx
  rep stosb
  movl $(kernel_bss_start - KERNEL_OFFSET), %edi
  movl $kernel_bss_end, %ecx
  subl $kernel_bss_start, %ecx
  rep stosb
  movl $boot_stack_top, %esp
  pushl %esi
  call boot_build_page_tables
  addl $4, %esp
  movl boot_paging_result + 4, %eax
  movl %eax, %cr4
  movl boot_paging_result, %eax
  movl %eax, %cr3
  movl %cr0, %eax
  orl $0x80010000, %eax /* PG | WP */
  movl %eax, %cr0
  movl $(cpu_stacks + STACK_SIZE), %esp
  pushl %esi
  pushl %ebp
  movl $kernel_main, %eax
  call *%eax
1:
  hlt
  jmp 1b

  .section .boot.bss, "aw", @nobits
  .p2align 4
  .space 4096
boot_stack_top:
