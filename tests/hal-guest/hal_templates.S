/* hal-guest: templates of HAL-shaped functions, copied at boot (like a loader would) into the
 * code area at seed-chosen offsets. Every TPR access uses the absolute address 0xFFFE0080 and
 * is emitted byte by byte, so the instruction forms are exactly those of
 * /work/shared/design/hal-research.md; the tables are referenced by absolute address too, so
 * a byte copy anywhere is position independent. Templates never execute where they are
 * assembled (in .rodata); only the copies do.
 *
 * Calling conventions as in the HAL: KfRaiseIrql/KfLowerIrql are fastcall (IRQL in cl); the
 * raise functions return the old IRQL (from the TPR read via HalpVectorToIRQL) in eax;
 * readers return the raw TPR in eax; cmp/test functions return EFLAGS in eax. Only eax, ecx,
 * edx and flags are clobbered.
 *
 * Records: .rodata.haltmplrec holds {start, end, name} per template, .rodata.halsiterec
 * {template start, offset, length, form, tag} per TPR (or ICR) access. */

#define TPR 0xFFFE0080
#define ICR 0xFFFE0300

	.macro TBEGIN id
	.pushsection .rodata.haltmplrec, "a"
	.p2align 2
	.long .Lt_\id\()_s, .Lt_\id\()_e, .Lt_\id\()_n
	.popsection
	.pushsection .rodata.halstr, "a"
.Lt_\id\()_n:
	.asciz "\id"
	.popsection
	.section .rodata.haltmpl, "a"
	.p2align 4
.Lt_\id\()_s:
	.endm

	.macro TEND id
.Lt_\id\()_e:
	.byte 0xCC, 0xCC, 0xCC, 0xCC
	.endm

	.macro SITE id, tag, form, len
	.pushsection .rodata.halsiterec, "a"
	.p2align 2
	.long .Lt_\id\()_s, .Ls\@ - .Lt_\id\()_s, \len, .Lsf\@, .Lst\@
	.popsection
	.pushsection .rodata.halstr, "a"
.Lsf\@:
	.asciz "\form"
.Lst\@:
	.asciz "\tag"
	.popsection
.Ls\@:
	.endm

	.macro TPRADDR
	.long TPR
	.endm

/* ---------------------------------------------------------------- tables */
/* HalpIRQLtoTPR (hal-research.md line 16): 00 3D 41 41 51 61 71 81 91 A1 B1 (x17) C1 D1 E1
 * EF FF, indexed by IRQL 0..31. */
	.section .rodata.haltables, "a"
	.p2align 4
	.globl HalpIRQLtoTPR, HalpVectorToIRQL
HalpIRQLtoTPR:
	.byte 0x00, 0x3D, 0x41, 0x41, 0x51, 0x61, 0x71, 0x81, 0x91, 0xA1
	.byte 0xB1, 0xB1, 0xB1, 0xB1, 0xB1, 0xB1, 0xB1, 0xB1, 0xB1, 0xB1
	.byte 0xB1, 0xB1, 0xB1, 0xB1, 0xB1, 0xB1, 0xB1
	.byte 0xC1, 0xD1, 0xE1, 0xEF, 0xFF
/* HalpVectorToIRQL: TPR class (TPR >> 4) to IRQL; the inverse of the table above for every
 * value in it except 0xEF (class E reads back as IPI_LEVEL 29). Inferred, not sourced. */
HalpVectorToIRQL:
	.byte 0, 0, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 27, 28, 29, 31

/* ---------------------------------------------------------------- KfRaiseIrql */
/* raise_a: exactly the WinDbg listing (hal-research.md lines 8-11). */
	TBEGIN raise_a
	.byte 0x0F, 0xB6, 0xD1                      /* movzx edx, cl */
	.byte 0x0F, 0xB6, 0x8A                      /* movzx ecx, byte [edx+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE raise_a, rd, A1, 5
	.byte 0xA1                                  /* mov eax, [tpr] */
	TPRADDR
	SITE raise_a, wr, 89/ecx, 6
	.byte 0x89, 0x0D                            /* mov [tpr], ecx */
	TPRADDR
	.byte 0xC1, 0xE8, 0x04                      /* shr eax, 4 */
	.byte 0x0F, 0xB6, 0x80                      /* movzx eax, byte [eax+HalpVectorToIRQL] */
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND raise_a

/* raise_b: the other HAL's opening `33 C0 8A C1 8B 0D <tpr>` (line 15), written back via A3. */
	TBEGIN raise_b
	.byte 0x33, 0xC0                            /* xor eax, eax */
	.byte 0x8A, 0xC1                            /* mov al, cl */
	SITE raise_b, rd, 8B/ecx, 6
	.byte 0x8B, 0x0D                            /* mov ecx, [tpr] */
	TPRADDR
	.byte 0x0F, 0xB6, 0x80                      /* movzx eax, byte [eax+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE raise_b, wr, A3, 5
	.byte 0xA3                                  /* mov [tpr], eax */
	TPRADDR
	.byte 0xC1, 0xE9, 0x04                      /* shr ecx, 4 */
	.byte 0x0F, 0xB6, 0x81                      /* movzx eax, byte [ecx+HalpVectorToIRQL] */
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND raise_b

/* raise_c: read through edx (8B 15), write 89 0D. */
	TBEGIN raise_c
	.byte 0x0F, 0xB6, 0xC1                      /* movzx eax, cl */
	.byte 0x0F, 0xB6, 0x88                      /* movzx ecx, byte [eax+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE raise_c, rd, 8B/edx, 6
	.byte 0x8B, 0x15                            /* mov edx, [tpr] */
	TPRADDR
	SITE raise_c, wr, 89/ecx, 6
	.byte 0x89, 0x0D                            /* mov [tpr], ecx */
	TPRADDR
	.byte 0xC1, 0xEA, 0x04                      /* shr edx, 4 */
	.byte 0x0F, 0xB6, 0x82                      /* movzx eax, byte [edx+HalpVectorToIRQL] */
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND raise_c

/* ---------------------------------------------------------------- KeRaiseIrqlToDpcLevel */
/* dpc_edx: exactly lines 12-13. */
	TBEGIN dpc_edx
	SITE dpc_edx, rd, 8B/edx, 6
	.byte 0x8B, 0x15                            /* mov edx, [tpr] */
	TPRADDR
	SITE dpc_edx, wr, C7/41, 10
	.byte 0xC7, 0x05                            /* mov dword [tpr], 0x41 */
	TPRADDR
	.long 0x41
	.byte 0xC1, 0xEA, 0x04                      /* shr edx, 4 */
	.byte 0x0F, 0xB6, 0x82                      /* movzx eax, byte [edx+HalpVectorToIRQL] */
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND dpc_edx

	TBEGIN dpc_ecx
	SITE dpc_ecx, rd, 8B/ecx, 6
	.byte 0x8B, 0x0D                            /* mov ecx, [tpr] */
	TPRADDR
	SITE dpc_ecx, wr, C7/41, 10
	.byte 0xC7, 0x05
	TPRADDR
	.long 0x41
	.byte 0xC1, 0xE9, 0x04                      /* shr ecx, 4 */
	.byte 0x0F, 0xB6, 0x81
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND dpc_ecx

/* ---------------------------------------------------------------- KeRaiseIrqlToSynchLevel */
/* synch_edx: the copy with `C1 00 00 00` (line 14). */
	TBEGIN synch_edx
	SITE synch_edx, rd, 8B/edx, 6
	.byte 0x8B, 0x15
	TPRADDR
	SITE synch_edx, wr, C7/C1, 10
	.byte 0xC7, 0x05                            /* mov dword [tpr], 0xC1 */
	TPRADDR
	.long 0xC1
	.byte 0xC1, 0xEA, 0x04
	.byte 0x0F, 0xB6, 0x82
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND synch_edx

	TBEGIN synch_eax
	SITE synch_eax, rd, A1, 5
	.byte 0xA1
	TPRADDR
	SITE synch_eax, wr, C7/C1, 10
	.byte 0xC7, 0x05
	TPRADDR
	.long 0xC1
	.byte 0xC1, 0xE8, 0x04
	.byte 0x0F, 0xB6, 0x80
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND synch_eax

/* ---------------------------------------------------------------- KfLowerIrql */
/* lower_ecx_rb: table lookup, 89 0D write, then a read back (inferred XP shape). */
	TBEGIN lower_ecx_rb
	.byte 0x0F, 0xB6, 0xC9                      /* movzx ecx, cl */
	.byte 0x0F, 0xB6, 0x89                      /* movzx ecx, byte [ecx+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE lower_ecx_rb, wr, 89/ecx, 6
	.byte 0x89, 0x0D                            /* mov [tpr], ecx */
	TPRADDR
	SITE lower_ecx_rb, rb, A1, 5
	.byte 0xA1                                  /* mov eax, [tpr] */
	TPRADDR
	.byte 0xC3
	TEND lower_ecx_rb

	TBEGIN lower_ecx
	.byte 0x0F, 0xB6, 0xC9
	.byte 0x0F, 0xB6, 0x89
	.long HalpIRQLtoTPR
	SITE lower_ecx, wr, 89/ecx, 6
	.byte 0x89, 0x0D
	TPRADDR
	.byte 0xC3
	TEND lower_ecx

	TBEGIN lower_edx
	.byte 0x0F, 0xB6, 0xD1                      /* movzx edx, cl */
	.byte 0x0F, 0xB6, 0x92                      /* movzx edx, byte [edx+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE lower_edx, wr, 89/edx, 6
	.byte 0x89, 0x15                            /* mov [tpr], edx */
	TPRADDR
	.byte 0xC3
	TEND lower_edx

	TBEGIN lower_eax
	.byte 0x0F, 0xB6, 0xC1                      /* movzx eax, cl */
	.byte 0x0F, 0xB6, 0x80                      /* movzx eax, byte [eax+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE lower_eax, wr, A3, 5
	.byte 0xA3                                  /* mov [tpr], eax */
	TPRADDR
	.byte 0xC3
	TEND lower_eax

	TBEGIN lower_esi
	.byte 0x56                                  /* push esi */
	.byte 0x0F, 0xB6, 0xF1                      /* movzx esi, cl */
	.byte 0x0F, 0xB6, 0xB6                      /* movzx esi, byte [esi+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE lower_esi, wr, 89/esi, 6
	.byte 0x89, 0x35                            /* mov [tpr], esi */
	TPRADDR
	.byte 0x5E                                  /* pop esi */
	.byte 0xC3
	TEND lower_esi

	TBEGIN lower_ebx
	.byte 0x53                                  /* push ebx */
	.byte 0x0F, 0xB6, 0xD9                      /* movzx ebx, cl */
	.byte 0x0F, 0xB6, 0x9B                      /* movzx ebx, byte [ebx+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE lower_ebx, wr, 89/ebx, 6
	.byte 0x89, 0x1D                            /* mov [tpr], ebx */
	TPRADDR
	.byte 0x5B                                  /* pop ebx */
	.byte 0xC3
	TEND lower_ebx

/* ---------------------------------------------------------------- KeGetCurrentIrql */
	TBEGIN get_ecx
	SITE get_ecx, rd, 8B/ecx, 6
	.byte 0x8B, 0x0D                            /* mov ecx, [tpr] */
	TPRADDR
	.byte 0xC1, 0xE9, 0x04                      /* shr ecx, 4 */
	.byte 0x0F, 0xB6, 0x81                      /* movzx eax, byte [ecx+HalpVectorToIRQL] */
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND get_ecx

	TBEGIN get_eax
	SITE get_eax, rd, A1, 5
	.byte 0xA1
	TPRADDR
	.byte 0xC1, 0xE8, 0x04
	.byte 0x0F, 0xB6, 0x80
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND get_eax

	TBEGIN get_edx
	SITE get_edx, rd, 8B/edx, 6
	.byte 0x8B, 0x15
	TPRADDR
	.byte 0xC1, 0xEA, 0x04
	.byte 0x0F, 0xB6, 0x82
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND get_edx

	TBEGIN get_esi
	.byte 0x56
	SITE get_esi, rd, 8B/esi, 6
	.byte 0x8B, 0x35                            /* mov esi, [tpr] */
	TPRADDR
	.byte 0xC1, 0xEE, 0x04                      /* shr esi, 4 */
	.byte 0x0F, 0xB6, 0x86                      /* movzx eax, byte [esi+HalpVectorToIRQL] */
	.long HalpVectorToIRQL
	.byte 0x5E
	.byte 0xC3
	TEND get_esi

/* ---------------------------------------------------------------- raw TPR readers */
	TBEGIN rd_push
	SITE rd_push, rd, FF/6, 6
	.byte 0xFF, 0x35                            /* push dword [tpr] */
	TPRADDR
	.byte 0x58                                  /* pop eax */
	.byte 0xC3
	TEND rd_push

	TBEGIN rd_a1
	SITE rd_a1, rd, A1, 5
	.byte 0xA1
	TPRADDR
	.byte 0xC3
	TEND rd_a1

	TBEGIN rd_ecx
	SITE rd_ecx, rd, 8B/ecx, 6
	.byte 0x8B, 0x0D
	TPRADDR
	.byte 0x8B, 0xC1                            /* mov eax, ecx */
	.byte 0xC3
	TEND rd_ecx

	TBEGIN rd_edx
	SITE rd_edx, rd, 8B/edx, 6
	.byte 0x8B, 0x15
	TPRADDR
	.byte 0x8B, 0xC2                            /* mov eax, edx */
	.byte 0xC3
	TEND rd_edx

	TBEGIN rd_esi
	.byte 0x56
	SITE rd_esi, rd, 8B/esi, 6
	.byte 0x8B, 0x35
	TPRADDR
	.byte 0x8B, 0xC6                            /* mov eax, esi */
	.byte 0x5E
	.byte 0xC3
	TEND rd_esi

	TBEGIN rd_edi
	.byte 0x57
	SITE rd_edi, rd, 8B/edi, 6
	.byte 0x8B, 0x3D                            /* mov edi, [tpr] */
	TPRADDR
	.byte 0x8B, 0xC7                            /* mov eax, edi */
	.byte 0x5F
	.byte 0xC3
	TEND rd_edi

	TBEGIN rd_ebx
	.byte 0x53
	SITE rd_ebx, rd, 8B/ebx, 6
	.byte 0x8B, 0x1D                            /* mov ebx, [tpr] */
	TPRADDR
	.byte 0x8B, 0xC3                            /* mov eax, ebx */
	.byte 0x5B
	.byte 0xC3
	TEND rd_ebx

	TBEGIN rd_ebp
	.byte 0x55
	SITE rd_ebp, rd, 8B/ebp, 6
	.byte 0x8B, 0x2D                            /* mov ebp, [tpr] */
	TPRADDR
	.byte 0x8B, 0xC5                            /* mov eax, ebp */
	.byte 0x5D
	.byte 0xC3
	TEND rd_ebp

/* ---------------------------------------------------------------- MoveZeroToTpr */
/* GPLPV's `83 25 80 00 FE FF 00` (line 20). */
	TBEGIN zero_and
	SITE zero_and, wr, 83/4, 7
	.byte 0x83, 0x25                            /* and dword [tpr], 0 */
	TPRADDR
	.byte 0x00
	.byte 0xC3
	TEND zero_and

/* ---------------------------------------------------------------- rare writers (raise-like) */
	TBEGIN rw_edi
	.byte 0x57                                  /* push edi */
	.byte 0x0F, 0xB6, 0xF9                      /* movzx edi, cl */
	.byte 0x0F, 0xB6, 0xBF                      /* movzx edi, byte [edi+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE rw_edi, rd, A1, 5
	.byte 0xA1
	TPRADDR
	SITE rw_edi, wr, 89/edi, 6
	.byte 0x89, 0x3D                            /* mov [tpr], edi */
	TPRADDR
	.byte 0x5F
	.byte 0xC1, 0xE8, 0x04
	.byte 0x0F, 0xB6, 0x80
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND rw_edi

	TBEGIN rw_ebx
	.byte 0x53
	.byte 0x0F, 0xB6, 0xC1                      /* movzx eax, cl */
	.byte 0x0F, 0xB6, 0x98                      /* movzx ebx, byte [eax+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE rw_ebx, rd, 8B/edx, 6
	.byte 0x8B, 0x15
	TPRADDR
	SITE rw_ebx, wr, 89/ebx, 6
	.byte 0x89, 0x1D
	TPRADDR
	.byte 0x5B
	.byte 0xC1, 0xEA, 0x04
	.byte 0x0F, 0xB6, 0x82
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND rw_ebx

/* Fixed-level rare raises (ignore cl): IRQL 5 (0x61) and IRQL 10 (0xB1). */
	TBEGIN rw_c7_61
	SITE rw_c7_61, rd, A1, 5
	.byte 0xA1
	TPRADDR
	SITE rw_c7_61, wr, C7/61, 10
	.byte 0xC7, 0x05
	TPRADDR
	.long 0x61
	.byte 0xC1, 0xE8, 0x04
	.byte 0x0F, 0xB6, 0x80
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND rw_c7_61

	TBEGIN rw_c7_b1
	SITE rw_c7_b1, rd, 8B/ecx, 6
	.byte 0x8B, 0x0D
	TPRADDR
	SITE rw_c7_b1, wr, C7/B1, 10
	.byte 0xC7, 0x05
	TPRADDR
	.long 0xB1
	.byte 0xC1, 0xE9, 0x04
	.byte 0x0F, 0xB6, 0x81
	.long HalpVectorToIRQL
	.byte 0xC3
	TEND rw_c7_b1

/* ---------------------------------------------------------------- register-relative */
	TBEGIN rr_rd
	.byte 0x53
	.byte 0xBB                                  /* mov ebx, 0xFFFE0000 */
	.long 0xFFFE0000
	SITE rr_rd, rd, regrel-8B/ebx+80, 6
	.byte 0x8B, 0x83                            /* mov eax, [ebx+0x80] */
	.long 0x80
	.byte 0x5B
	.byte 0xC3
	TEND rr_rd

	TBEGIN rr_wr
	.byte 0x53
	.byte 0xBB
	.long 0xFFFE0000
	.byte 0x0F, 0xB6, 0xC1                      /* movzx eax, cl */
	.byte 0x0F, 0xB6, 0x80                      /* movzx eax, byte [eax+HalpIRQLtoTPR] */
	.long HalpIRQLtoTPR
	SITE rr_wr, wr, regrel-89/ebx+80, 6
	.byte 0x89, 0x83                            /* mov [ebx+0x80], eax */
	.long 0x80
	.byte 0x5B
	.byte 0xC3
	TEND rr_wr

/* ---------------------------------------------------------------- cmp / test of the TPR */
	TBEGIN cmp_00
	SITE cmp_00, rd, cmp-83/7/00, 7
	.byte 0x83, 0x3D                            /* cmp dword [tpr], 0 */
	TPRADDR
	.byte 0x00
	.byte 0x9C, 0x58, 0xC3                      /* pushfd; pop eax; ret */
	TEND cmp_00

	TBEGIN cmp_41
	SITE cmp_41, rd, cmp-83/7/41, 7
	.byte 0x83, 0x3D                            /* cmp dword [tpr], 0x41 */
	TPRADDR
	.byte 0x41
	.byte 0x9C, 0x58, 0xC3
	TEND cmp_41

	TBEGIN test_f0
	SITE test_f0, rd, test-F7/0/F0, 10
	.byte 0xF7, 0x05                            /* test dword [tpr], 0xF0 */
	TPRADDR
	.long 0xF0
	.byte 0x9C, 0x58, 0xC3
	TEND test_f0

/* ---------------------------------------------------------------- ICR (same page as the TPR) */
	TBEGIN icr_abs
	SITE icr_abs, icr, icr-89/ecx, 6
	.byte 0x89, 0x0D                            /* mov [0xFFFE0300], ecx */
	.long ICR
	.byte 0xC3
	TEND icr_abs

	TBEGIN icr_rr
	.byte 0x53
	.byte 0xBB
	.long 0xFFFE0000
	SITE icr_rr, icr, icr-regrel-89/ebx+300, 6
	.byte 0x89, 0x8B                            /* mov [ebx+0x300], ecx */
	.long 0x300
	.byte 0x5B
	.byte 0xC3
	TEND icr_rr

/* ---------------------------------------------------------------- negative-test injector */
/* A TPR write behind the HAL's back (inject=stale): the guest's bookkeeping does not see it. */
	TBEGIN inj_c7
	SITE inj_c7, wr, C7/3D, 10
	.byte 0xC7, 0x05
	TPRADDR
	.long 0x3D
	.byte 0xC3
	TEND inj_c7

/* ---------------------------------------------------------------- decoys */
/* TPR-access byte patterns in data on a page of their own; never executed. */
	.macro DECOY name, form
	.pushsection .rodata.decoyrec, "a"
	.p2align 2
	.long .Ld_\name, .Ldf_\name, .Ldn_\name
	.popsection
	.pushsection .rodata.halstr, "a"
.Ldf_\name:
	.asciz "\form"
.Ldn_\name:
	.asciz "\name"
	.popsection
	.section .decoy, "a"
.Ld_\name:
	.endm

	DECOY decoy_a1, A1
	.byte 0xA1
	TPRADDR
	.byte 0x00, 0x00, 0x00
	DECOY decoy_89_ecx, 89/ecx
	.byte 0x89, 0x0D
	TPRADDR
	.byte 0x00, 0x00
	DECOY decoy_c7_41, C7/41
	.byte 0xC7, 0x05
	TPRADDR
	.long 0x41
	.byte 0x00, 0x00
	DECOY decoy_83_and, 83/4
	.byte 0x83, 0x25
	TPRADDR
	.byte 0x00
	.byte 0x00, 0x00
	DECOY decoy_ff_push, FF/6
	.byte 0xFF, 0x35
	TPRADDR
	.byte 0x00, 0x00
	DECOY decoy_8b_edx, 8B/edx
	.byte 0x8B, 0x15
	TPRADDR
	.byte 0x00, 0x00

	.section .note.GNU-stack, "", @progbits
