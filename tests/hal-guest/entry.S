/* hal-guest boot code: multiboot header, identity-mapped entry that builds the page tables
 * (non-PAE, first 4 MiB by 4 KiB pages, the rest of RAM by 4 MiB pages at 0x80000000, the
 * local APIC at 0xFFFE0000 with PCD|PWT), the AP trampoline (copied to physical 0x8000),
 * the interrupt stubs and the double-fault task entry. */

#define KOFF 0x80000000
#define STACK_SIZE 16384

	.section .multiboot, "a"
	.p2align 2
	.long 0x1BADB002
	.long 0x00000003
	.long -(0x1BADB002 + 0x00000003)

/* ---------------------------------------------------------------- identity part */
	.section .boot.text, "ax"
	.code32
	.globl hg_entry
hg_entry:
	cli
	cld
	mov $boot_stack_top, %esp
	mov %ebx, boot_mbi
	mov %eax, boot_magic

	/* Zero the kernel's bss (physical addresses: paging is still off). */
	mov $(kernel_bss_start - KOFF), %edi
	mov $(kernel_bss_end - KOFF), %ecx
	sub %edi, %ecx
	xor %eax, %eax
	rep stosb

	/* Zero the three page-table pages. */
	mov $boot_pd, %edi
	mov $(3 * 1024), %ecx
	rep stosl

	/* boot_pt_low: the first 4 MiB with 4 KiB pages, present + writable. */
	mov $boot_pt_low, %edi
	mov $0x003, %eax
	mov $1024, %ecx
1:	mov %eax, (%edi)
	add $4096, %eax
	add $4, %edi
	loop 1b
	mov $(boot_pt_low + 3), %eax
	mov %eax, boot_pd                 /* identity 0-4 MiB */
	mov %eax, boot_pd + 512 * 4       /* 0x80000000-0x803FFFFF */

	/* RAM size from the multiboot info (mem_upper, KiB above 1 MiB), capped at 256 MiB. */
	mov $(64 << 20), %edx
	mov boot_mbi, %ebx
	testl $1, (%ebx)
	jz 2f
	mov 8(%ebx), %edx
	shl $10, %edx
	add $0x100000, %edx
2:	add $0x3FFFFF, %edx               /* round up: QEMU keeps ACPI data below the top */
	and $0xFFC00000, %edx
	cmp $0x10000000, %edx
	jbe 3f
	mov $0x10000000, %edx
3:
	mov %edx, boot_ram_mapped
	/* 4 MiB pages for [4 MiB, RAM) at 0x80400000 on. */
	mov $0x400000, %eax
4:	lea 0x400000(%eax), %ecx
	cmp %edx, %ecx
	ja 5f
	mov %eax, %ecx
	or $0x83, %ecx
	mov %eax, %esi
	shr $22, %esi
	mov %ecx, boot_pd + 512 * 4(, %esi, 4)
	add $0x400000, %eax
	jmp 4b
5:
	/* Local APIC 0xFEE00000 at 0xFFFE0000: present, writable, PWT, PCD. */
	mov $(boot_pt_apic + 3), %eax
	mov %eax, boot_pd + 1023 * 4
	movl $(0xFEE00000 | 0x1B), boot_pt_apic + 0x3E0 * 4

	mov $boot_pd, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $0x10, %eax                    /* PSE */
	mov %eax, %cr4
	mov %cr0, %eax
	or $0x80010000, %eax              /* PG | WP */
	mov %eax, %cr0

	lgdt boot_gdtr
	ljmp $0x08, $6f
6:	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov %ax, %fs
	mov %ax, %gs
	mov $(cpu_stacks + STACK_SIZE), %esp
	mov $kernel_main, %eax
	call *%eax
7:	cli
	hlt
	jmp 7b

	.section .boot.data, "aw"
	.p2align 3
boot_gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF
	.quad 0x00CF92000000FFFF
boot_gdtr:
	.word 23
	.long boot_gdt
	.p2align 2
	.globl boot_mbi, boot_magic, boot_ram_mapped
boot_mbi:	.long 0
boot_magic:	.long 0
boot_ram_mapped: .long 0

	.section .boot.bss, "aw", @nobits
	.p2align 12
	.globl boot_pd
boot_pd:	.skip 4096
boot_pt_low:	.skip 4096
boot_pt_apic:	.skip 4096
	.skip 4096
boot_stack_top:

/* ---------------------------------------------------------------- AP trampoline */
/* Copied to physical TRAMP_PHYS (0x8000); the SIPI vector is 0x08 (CS=0x0800, IP=0). The BSP
 * fills tr_cr3/tr_stack/tr_entry in the copy before each start. */
#define TRAMP_PHYS 0x8000
	.section .text
	.code16
	.globl ap_tramp_start, ap_tramp_end, tr_cr3, tr_stack, tr_entry
ap_tramp_start:
	cli
	cld
	mov %cs, %ax
	mov %ax, %ds
	lgdtl (tr_gdtr - ap_tramp_start)
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $0x08, $(TRAMP_PHYS + tr_pm - ap_tramp_start)
	.code32
tr_pm:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov (TRAMP_PHYS + tr_cr3 - ap_tramp_start), %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $0x10, %eax
	mov %eax, %cr4
	mov %cr0, %eax
	or $0x80010000, %eax
	mov %eax, %cr0
	mov (TRAMP_PHYS + tr_stack - ap_tramp_start), %esp
	mov (TRAMP_PHYS + tr_entry - ap_tramp_start), %eax
	jmp *%eax
	.p2align 3
tr_gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF
	.quad 0x00CF92000000FFFF
tr_gdtr:
	.word 23
	.long TRAMP_PHYS + tr_gdt - ap_tramp_start
	.p2align 2
tr_cr3:	.long 0
tr_stack: .long 0
tr_entry: .long 0
ap_tramp_end:

/* High-half AP entry: the trampoline jumps here with the AP's own stack. */
	.globl ap_entry
ap_entry:
	cld
	call ap_main
1:	cli
	hlt
	jmp 1b

/* cpu_load_segments(const struct gdtr*): loads this CPU's GDT, reloads CS/DS/ES/SS, FS = 0x30
 * (the KPCR), GS = 0 and the TSS (0x28). */
	.globl cpu_load_segments
cpu_load_segments:
	mov 4(%esp), %eax
	lgdt (%eax)
	ljmp $0x08, $1f
1:	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %ss
	mov $0x30, %ax
	mov %ax, %fs
	xor %ax, %ax
	mov %ax, %gs
	mov $0x28, %ax
	ltr %ax
	ret

/* ---------------------------------------------------------------- interrupt stubs */
/* 256 stubs of 16 bytes each: isr_stubs + 16 * vector. Exceptions without an error code
 * push a dummy 0. */
	.p2align 4
	.globl isr_stubs
isr_stubs:
	.set vec, 0
	.rept 256
	.p2align 4
	.if (vec == 8) | ((vec >= 10) & (vec <= 14)) | (vec == 17) | (vec == 21) | (vec == 29) | (vec == 30)
	.else
	pushl $0
	.endif
	pushl $vec
	jmp isr_common
	.set vec, vec + 1
	.endr

isr_common:
	pushal
	cld
	mov %esp, %eax
	push %eax
	call isr_dispatch
	add $4, %esp
	popal
	add $8, %esp
	iret

/* Double fault: a task gate switches here on the CPU's own DF stack. */
	.globl df_task_entry
df_task_entry:
	call df_main
1:	cli
	hlt
	jmp 1b

	.section .note.GNU-stack, "", @progbits
