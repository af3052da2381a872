/* Every TPR access of the guest. The instruction bytes are written with .byte so the assembler
 * cannot pick another encoding (A1/A3 vs 8B/89). Each site gets a global symbol tprsite_<name>
 * and an entry in .rodata.sitetab (address, name, form, register, kind), printed at boot as
 * SITE lines. The wrappers load sentinels into every other register and a flags pattern, run
 * one site, and count any change of a register, ESP or EFLAGS in fs:[KPCR_SCRATCH_CLOBBER]:
 * a patched site whose handler clobbers something is caught here. */
#include "guest.h"

#define SENT_EAX 0x5EA70001
#define SENT_ECX 0x5EA70002
#define SENT_EDX 0x5EA70003
#define SENT_EBX 0x5EA70004
#define SENT_EBP 0x5EA70005
#define SENT_ESI 0x5EA70006
#define SENT_EDI 0x5EA70007
/* CF PF AF ZF SF IF DF OF */
#define FLAGS_CHECKED 0xED5
/* and dword [tpr], 0 sets CF PF AF ZF SF OF: result 0, so ZF PF = 1, CF OF SF = 0 and AF = 0
 * (undefined for `and` in the manuals; 0 under QEMU's TCG, and what tprd's handler leaves). */
#define AND_FLAGS_WRITTEN 0x8D5
#define AND_FLAGS_ZERO_RESULT 0x44

#define TPR_BYTES 0x80, 0x00, 0xFE, 0xFF

  .section .rodata.sitestr, "a"
  .section .text.sites, "ax"
  .code32

.macro SITE name, form, reg, kind
  .globl tprsite_\name
tprsite_\name:
  .pushsection .rodata.sitestr, "a"
sitename_\name: .asciz "\name"
siteform_\name: .asciz "\form"
sitereg_\name: .asciz "\reg"
  .popsection
  .pushsection .rodata.sitetab, "a"
  .long tprsite_\name, sitename_\name, siteform_\name, sitereg_\name, \kind
  .popsection
.endm

.macro FUNC name
  .globl \name
  .type \name, @function
  .p2align 4
\name:
.endm

.macro LOAD_SENTINELS
  movl $SENT_ECX, %ecx
  movl $SENT_EDX, %edx
  movl $SENT_EBX, %ebx
  movl $SENT_EBP, %ebp
  movl $SENT_ESI, %esi
  movl $SENT_EDI, %edi
  movl $SENT_EAX, %eax
.endm

.macro CHECK_ONE reg, except, value, bad
  .ifnc \reg,\except
  cmpl $\value, %\reg
  jne \bad
  .endif
.endm

.macro CHECK_SENTINELS except, bad
  CHECK_ONE eax, \except, SENT_EAX, \bad
  CHECK_ONE ecx, \except, SENT_ECX, \bad
  CHECK_ONE edx, \except, SENT_EDX, \bad
  CHECK_ONE ebx, \except, SENT_EBX, \bad
  CHECK_ONE ebp, \except, SENT_EBP, \bad
  CHECK_ONE esi, \except, SENT_ESI, \bad
  CHECK_ONE edi, \except, SENT_EDI, \bad
.endm

/* Flags and ESP as the site left them: compare with what the wrapper set. */
.macro AFTER_SITE
  pushfl
  popl %fs:KPCR_SCRATCH_GOTFLAGS
.endm

.macro CHECK_FLAGS_AND_RETURN
  movl %fs:KPCR_SCRATCH_GOTFLAGS, %ecx
  xorl %fs:KPCR_SCRATCH_FLAGS, %ecx
  testl $FLAGS_CHECKED, %ecx
  jz 93f
  incl %fs:KPCR_SCRATCH_CLOBBER
93:
  pushl %fs:KPCR_SCRATCH_FLAGS /* leave with the caller's IF */
  popfl
  popl %edi
  popl %esi
  popl %ebx
  popl %ebp
  ret
.endm

/* uint32_t fn(uint32_t flags): runs a read site whose destination is \reg. */
.macro READ_WRAPPER fn, name, form, reg, bytes:vararg
FUNC \fn
  pushl %ebp
  pushl %ebx
  pushl %esi
  pushl %edi
  movl 20(%esp), %eax
  movl %eax, %fs:KPCR_SCRATCH_FLAGS
  LOAD_SENTINELS
  pushl %fs:KPCR_SCRATCH_FLAGS
  popfl
  movl %esp, %fs:KPCR_SCRATCH_ESP
  .ifnc \name,nosite
  SITE \name, \form, \reg, SITE_PATCHABLE
  .endif
  \bytes
  AFTER_SITE
  cmpl %esp, %fs:KPCR_SCRATCH_ESP
  jne 91f
  CHECK_SENTINELS \reg, 91f
  jmp 92f
91:
  incl %fs:KPCR_SCRATCH_CLOBBER
92:
  movl %\reg, %eax
  CHECK_FLAGS_AND_RETURN
.endm

/* void fn(uint32_t value, uint32_t flags): runs a write site whose source is \reg. */
.macro WRITE_WRAPPER fn, name, form, reg, bytes:vararg
FUNC \fn
  pushl %ebp
  pushl %ebx
  pushl %esi
  pushl %edi
  movl 24(%esp), %eax
  movl %eax, %fs:KPCR_SCRATCH_FLAGS
  movl 20(%esp), %eax
  movl %eax, %fs:KPCR_SCRATCH_PUSHED
  LOAD_SENTINELS
  movl %fs:KPCR_SCRATCH_PUSHED, %\reg
  pushl %fs:KPCR_SCRATCH_FLAGS
  popfl
  movl %esp, %fs:KPCR_SCRATCH_ESP
  .ifnc \name,nosite
  SITE \name, \form, \reg, SITE_PATCHABLE
  .endif
  \bytes
  AFTER_SITE
  cmpl %esp, %fs:KPCR_SCRATCH_ESP
  jne 91f
  cmpl %fs:KPCR_SCRATCH_PUSHED, %\reg
  jne 91f
  CHECK_SENTINELS \reg, 91f
  jmp 92f
91:
  incl %fs:KPCR_SCRATCH_CLOBBER
92:
  CHECK_FLAGS_AND_RETURN
.endm

/* void fn(uint32_t flags): mov dword [tpr], \value. */
.macro IMM_WRITER fn, name, value
FUNC \fn
  pushl %ebp
  pushl %ebx
  pushl %esi
  pushl %edi
  movl 20(%esp), %eax
  movl %eax, %fs:KPCR_SCRATCH_FLAGS
  LOAD_SENTINELS
  pushl %fs:KPCR_SCRATCH_FLAGS
  popfl
  movl %esp, %fs:KPCR_SCRATCH_ESP
  SITE \name, C7, imm, SITE_PATCHABLE
  .byte 0xC7, 0x05, TPR_BYTES
  .long \value
  AFTER_SITE
  cmpl %esp, %fs:KPCR_SCRATCH_ESP
  jne 91f
  CHECK_SENTINELS none, 91f
  jmp 92f
91:
  incl %fs:KPCR_SCRATCH_CLOBBER
92:
  CHECK_FLAGS_AND_RETURN
.endm

/* void fn(uint32_t flags): and dword [tpr], 0 (83 /4 ib 0, "MoveZeroToTpr" in real HALs), or
 * for the selftest thunk the call a patched site makes instead. The register, ESP and flags
 * check expects what the and leaves: the pattern's CF PF AF ZF SF OF replaced by a zero
 * result's (IF and DF kept). */
.macro AND_ZERO_WRAPPER fn, name, bytes:vararg
FUNC \fn
  pushl %ebp
  pushl %ebx
  pushl %esi
  pushl %edi
  movl 20(%esp), %eax
  movl %eax, %fs:KPCR_SCRATCH_FLAGS
  LOAD_SENTINELS
  pushl %fs:KPCR_SCRATCH_FLAGS
  popfl
  movl %esp, %fs:KPCR_SCRATCH_ESP
  .ifnc \name,nosite
  SITE \name, 8325, none, SITE_PATCHABLE
  .endif
  \bytes
  AFTER_SITE
  cmpl %esp, %fs:KPCR_SCRATCH_ESP
  jne 91f
  CHECK_SENTINELS none, 91f
  jmp 92f
91:
  incl %fs:KPCR_SCRATCH_CLOBBER
92:
  movl %fs:KPCR_SCRATCH_FLAGS, %eax
  andl $~AND_FLAGS_WRITTEN, %eax
  orl $AND_FLAGS_ZERO_RESULT, %eax
  movl %eax, %fs:KPCR_SCRATCH_FLAGS
  CHECK_FLAGS_AND_RETURN
.endm

/* Reads: A1, 8B /r for every register but esp, FF /6. */
READ_WRAPPER tpr_read_a1_eax, rd_a1_eax, A1, eax, .byte 0xA1, TPR_BYTES
READ_WRAPPER tpr_read_8b_eax, rd_8b_eax, 8B, eax, .byte 0x8B, 0x05, TPR_BYTES
READ_WRAPPER tpr_read_8b_ecx, rd_8b_ecx, 8B, ecx, .byte 0x8B, 0x0D, TPR_BYTES
READ_WRAPPER tpr_read_8b_edx, rd_8b_edx, 8B, edx, .byte 0x8B, 0x15, TPR_BYTES
READ_WRAPPER tpr_read_8b_ebx, rd_8b_ebx, 8B, ebx, .byte 0x8B, 0x1D, TPR_BYTES
READ_WRAPPER tpr_read_8b_ebp, rd_8b_ebp, 8B, ebp, .byte 0x8B, 0x2D, TPR_BYTES
READ_WRAPPER tpr_read_8b_esi, rd_8b_esi, 8B, esi, .byte 0x8B, 0x35, TPR_BYTES
READ_WRAPPER tpr_read_8b_edi, rd_8b_edi, 8B, edi, .byte 0x8B, 0x3D, TPR_BYTES

/* uint32_t tpr_read_ff6_push(uint32_t flags): push dword [tpr]; pop into scratch. */
FUNC tpr_read_ff6_push
  pushl %ebp
  pushl %ebx
  pushl %esi
  pushl %edi
  movl 20(%esp), %eax
  movl %eax, %fs:KPCR_SCRATCH_FLAGS
  LOAD_SENTINELS
  pushl %fs:KPCR_SCRATCH_FLAGS
  popfl
  movl %esp, %fs:KPCR_SCRATCH_ESP
  SITE rd_ff6_push, FF6, stack, SITE_PATCHABLE
  .byte 0xFF, 0x35, TPR_BYTES
  popl %fs:KPCR_SCRATCH_PUSHED
  AFTER_SITE
  cmpl %esp, %fs:KPCR_SCRATCH_ESP
  jne 91f
  CHECK_SENTINELS none, 91f
  jmp 92f
91:
  incl %fs:KPCR_SCRATCH_CLOBBER
92:
  movl %fs:KPCR_SCRATCH_PUSHED, %eax
  CHECK_FLAGS_AND_RETURN

/* Writes: A3, 89 /r for every register but esp, C7 /0 with several immediates. */
WRITE_WRAPPER tpr_write_a3_eax, wr_a3_eax, A3, eax, .byte 0xA3, TPR_BYTES
WRITE_WRAPPER tpr_write_89_eax, wr_89_eax, 89, eax, .byte 0x89, 0x05, TPR_BYTES
WRITE_WRAPPER tpr_write_89_ecx, wr_89_ecx, 89, ecx, .byte 0x89, 0x0D, TPR_BYTES
WRITE_WRAPPER tpr_write_89_edx, wr_89_edx, 89, edx, .byte 0x89, 0x15, TPR_BYTES
WRITE_WRAPPER tpr_write_89_ebx, wr_89_ebx, 89, ebx, .byte 0x89, 0x1D, TPR_BYTES
WRITE_WRAPPER tpr_write_89_ebp, wr_89_ebp, 89, ebp, .byte 0x89, 0x2D, TPR_BYTES
WRITE_WRAPPER tpr_write_89_esi, wr_89_esi, 89, esi, .byte 0x89, 0x35, TPR_BYTES
WRITE_WRAPPER tpr_write_89_edi, wr_89_edi, 89, edi, .byte 0x89, 0x3D, TPR_BYTES

IMM_WRITER tpr_write_c7_00, wr_c7_00, 0x00
IMM_WRITER tpr_write_c7_3d, wr_c7_3d, 0x3D
IMM_WRITER tpr_write_c7_41, wr_c7_41, 0x41
IMM_WRITER tpr_write_c7_51, wr_c7_51, 0x51
IMM_WRITER tpr_write_c7_c1, wr_c7_c1, 0xC1
IMM_WRITER tpr_write_c7_ff, wr_c7_ff, 0xFF

/* and dword [tpr], 0: 7 bytes, patched as 66 90; call and_tpr_zero. */
AND_ZERO_WRAPPER tpr_write_and_zero, wr_and_zero, .byte 0x83, 0x25, TPR_BYTES, 0x00

/* The late site: patchable, first run only once uptime passes late=<seconds>. */
READ_WRAPPER late_site_read, late_8b_ebx, 8B, ebx, .byte 0x8B, 0x1D, TPR_BYTES

/* Shaped like the XP HAL's IRQL functions (fastcall: new value in ecx). */
FUNC KfRaiseIrql_tprg
  SITE hal_raise_read, A1, eax, SITE_PATCHABLE
  .byte 0xA1, TPR_BYTES /* mov eax,[tpr]: old value */
  SITE hal_raise_write, 89, ecx, SITE_PATCHABLE
  .byte 0x89, 0x0D, TPR_BYTES /* mov [tpr],ecx */
  ret

FUNC KfLowerIrql_tprg
  SITE hal_lower_write, 89, ecx, SITE_PATCHABLE
  .byte 0x89, 0x0D, TPR_BYTES /* mov [tpr],ecx */
  SITE hal_lower_readback, A1, eax, SITE_PATCHABLE
  .byte 0xA1, TPR_BYTES /* read back, as the HAL does to flush the write */
  ret

FUNC KeGetCurrentIrql_tprg
  SITE hal_get_current, A1, eax, SITE_PATCHABLE
  .byte 0xA1, TPR_BYTES
  ret

/* Benchmarks: the same forms in tight loops (iterations in the first argument). */
FUNC bench_tpr_read
  movl 4(%esp), %ecx
1:
  SITE bench_read, A1, eax, SITE_PATCHABLE
  .byte 0xA1, TPR_BYTES
  decl %ecx
  jnz 1b
  ret

FUNC bench_tpr_write
  movl 4(%esp), %ecx
  movl 8(%esp), %eax
1:
  SITE bench_write, A3, eax, SITE_PATCHABLE
  .byte 0xA3, TPR_BYTES
  decl %ecx
  jnz 1b
  ret

FUNC bench_mem_read
  movl 4(%esp), %ecx
1:
  movl bench_cell, %eax
  decl %ecx
  jnz 1b
  ret

FUNC bench_mem_write
  movl 4(%esp), %ecx
  movl 8(%esp), %eax
1:
  movl %eax, bench_cell
  decl %ecx
  jnz 1b
  ret

/* Forms tprd must never patch, run rarely. */
FUNC unpatchable_regrel_read
  movl $APIC_VA, %ecx
  SITE np_regrel_read, regrel, eax, SITE_UNPATCHABLE
  .byte 0x8B, 0x81, 0x80, 0x00, 0x00, 0x00 /* mov eax,[ecx+0x80] */
  ret

FUNC unpatchable_regrel_write
  movl 4(%esp), %edx
  movl $APIC_VA, %ecx
  SITE np_regrel_write, regrel, edx, SITE_UNPATCHABLE
  .byte 0x89, 0x91, 0x80, 0x00, 0x00, 0x00 /* mov [ecx+0x80],edx */
  ret

/* uint32_t unpatchable_cmp_imm(expected): cmp dword [tpr],imm32 against a patched-in copy
 * is not possible, so compare with each candidate class value through a table of sites. */
FUNC unpatchable_cmp_imm
  xorl %eax, %eax
  movl 4(%esp), %ecx
  cmpl $0x51, %ecx
  jne 1f
  SITE np_cmp_imm, cmp, none, SITE_UNPATCHABLE
  .byte 0x81, 0x3D, TPR_BYTES
  .long 0x51 /* cmp dword [tpr],0x51 */
  sete %al
  ret
1:
  movl $2, %eax /* only 0x51 has a site; 2 = not checked */
  ret

/* es: mov edx,[tpr]. (66 A1 would be a 16-bit read, which QEMU's APIC answers with 0.) */
FUNC unpatchable_es_read
  pushl %ebx
  SITE np_es_8b_edx, 268B, edx, SITE_UNPATCHABLE
  .byte 0x26, 0x8B, 0x15, TPR_BYTES
  movl %edx, %eax
  popl %ebx
  ret

FUNC unpatchable_ds_read
  SITE np_3ea1, 3EA1, eax, SITE_UNPATCHABLE
  .byte 0x3E, 0xA1, TPR_BYTES /* ds: mov eax,[tpr] */
  ret
  ud2

/* Never executed: TPR-access bytes inside a data table right after the code. A scanner sees
 * them; a patcher must not patch them because they never run. The table has its 4 KiB page to
 * itself, as data has in a real kernel image: under TCG, code that shares a page with an armed
 * breakpoint runs one instruction per translation block (docs/design.md, proving window), and
 * the decoy writers keep theirs under mmio. */
  .p2align 12
  .globl tprg_decoy_table
tprg_decoy_table:
  .long 0x00000010, 0x00000020
  SITE decoy_a1, A1, eax, SITE_DECOY
  .byte 0xA1, TPR_BYTES
  .byte 0x00, 0x00, 0x00
  SITE decoy_8b_ecx, 8B, ecx, SITE_DECOY
  .byte 0x8B, 0x0D, TPR_BYTES
  .byte 0x00, 0x00
  SITE decoy_a3, A3, eax, SITE_DECOY
  .byte 0xA3, TPR_BYTES
  .byte 0x00, 0x00, 0x00
  SITE decoy_c7, C7, imm, SITE_DECOY
  .byte 0xC7, 0x05, TPR_BYTES
  .long 0x41
  .byte 0x00, 0x00
  SITE decoy_and0, 8325, none, SITE_DECOY
  .byte 0x83, 0x25, TPR_BYTES, 0x00
  .byte 0x00
  SITE decoy_ff6, FF6, stack, SITE_DECOY
  .byte 0xFF, 0x35, TPR_BYTES
  .byte 0x00, 0x00
  .long 0x00000030, 0x00000040
  .globl tprg_decoy_table_end
tprg_decoy_table_end:
  .p2align 12

  .data
  .p2align 6
bench_cell:
  .long 0

/* ---- Handler self-test thunks (selftest.c) --------------------------------------------------
 * The same sentinel checks around a call into the tprd blob, made exactly as a patched site
 * makes it: `push r; call set_tpr`, `call set_tpr_eax`, `call get_tpr_<reg>`,
 * `push eax; call get_tpr_stack`, `66 90; call and_tpr_zero`. The handler's address is in
 * selftest_target. */
  .text
.macro ST_CALL
  call *selftest_target
.endm
.macro ST_PUSH_EDX_CALL
  pushl %edx
  call *selftest_target
.endm
.macro ST_NOP2_CALL
  .byte 0x66, 0x90
  call *selftest_target
.endm

WRITE_WRAPPER st_set_tpr, nosite, -, edx, ST_PUSH_EDX_CALL
WRITE_WRAPPER st_set_tpr_eax, nosite, -, eax, ST_CALL
READ_WRAPPER st_get_tpr_eax, nosite, -, eax, ST_CALL
AND_ZERO_WRAPPER st_and_tpr_zero, nosite, ST_NOP2_CALL
READ_WRAPPER st_get_tpr_ecx, nosite, -, ecx, ST_CALL
READ_WRAPPER st_get_tpr_edx, nosite, -, edx, ST_CALL
READ_WRAPPER st_get_tpr_ebx, nosite, -, ebx, ST_CALL
READ_WRAPPER st_get_tpr_ebp, nosite, -, ebp, ST_CALL
READ_WRAPPER st_get_tpr_esi, nosite, -, esi, ST_CALL
READ_WRAPPER st_get_tpr_edi, nosite, -, edi, ST_CALL

FUNC st_get_tpr_stack
  pushl %ebp
  pushl %ebx
  pushl %esi
  pushl %edi
  movl 20(%esp), %eax
  movl %eax, %fs:KPCR_SCRATCH_FLAGS
  LOAD_SENTINELS
  pushl %fs:KPCR_SCRATCH_FLAGS
  popfl
  movl %esp, %fs:KPCR_SCRATCH_ESP
  pushl %eax
  call *selftest_target
  popl %fs:KPCR_SCRATCH_PUSHED
  AFTER_SITE
  cmpl %esp, %fs:KPCR_SCRATCH_ESP
  jne 91f
  CHECK_SENTINELS none, 91f
  jmp 92f
91:
  incl %fs:KPCR_SCRATCH_CLOBBER
92:
  movl %fs:KPCR_SCRATCH_PUSHED, %eax
  CHECK_FLAGS_AND_RETURN

  .data
  .p2align 2
  .globl selftest_target
selftest_target:
  .long 0
