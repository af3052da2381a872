# tprd guest handler blob (32-bit, GNU as, AT&T syntax). docs/blob-format.md describes it.
#
# This file is the single source of truth for the blob's layout: every global symbol below
# (labels = offsets from blob_start, .set constants = sizes and field offsets) is exported by
# the build into guest-rom/blob_layout.h. Nothing about the layout is repeated by hand elsewhere.
#
# The blob is linked at two bases and with two TPR addresses; the build diffs the images to find
# the absolute addresses that the engine adjusts at install time (base relocations for the
# blob's own symbols, TPR relocations for the undefined symbol tpr_va).
#
# Layout: page 0 = header + handler code (immutable, checksummed); pages 1-2 = writable data
# (strategy word, per-CPU area, site table), kept off the code page because under TCG a store
# into a page that holds translated code takes the slow self-modifying-code path.

        .text
        .code32

# ---- constants ----------------------------------------------------------------------------
        .globl MAGIC, LAYOUT_VERSION, HEADER_SIZE, TOTAL_SIZE, DATA_OFFSET
        .set MAGIC, 0x42525054              # "TPRB" little endian
        .set LAYOUT_VERSION, 5              # 2: the data block may live apart (hdr_data_va);
                                            # 3: handler and_tpr_zero, site form 7 (83 /4);
                                            # 4: TPR writes through tpr_write_va (data block);
                                            # 5: per-CPU access counters (percpu_stats), 32 CPUs
        .set HEADER_SIZE, 0x84
        .set DATA_OFFSET, 0x1000            # first writable page; checksum covers [0, here)
        .set TOTAL_SIZE, 0x3000

        .globl STRATEGY_EXACT, STRATEGY_MMIO, STRATEGY_CR8
        .set STRATEGY_EXACT, 0              # engine::Strategy values: never renumber
        .set STRATEGY_MMIO, 1
        .set STRATEGY_CR8, 2

        .globl KPCR_PROCESSOR_NUMBER, DEFAULT_GUARD_PERIOD, MAX_GUARD_PERIOD
        .set KPCR_PROCESSOR_NUMBER, 0x51    # byte at fs:[0x51] in the Windows KPCR
        .set DEFAULT_GUARD_PERIOD, 64
        .set MAX_GUARD_PERIOD, 0xFFFF       # the per-CPU read counter is 16 bits

# Per-CPU entry, indexed by the KPCR processor number.
        .globl PCPU_SHADOW, PCPU_ENABLED, PCPU_READS, PCPU_MISMATCHES, PCPU_SIZE, PCPU_MAX
        .set PCPU_SHADOW, 0                 # u8: the guest's view of the TPR
        .set PCPU_ENABLED, 1                # u8: nonzero = handlers may use the shadow
        .set PCPU_READS, 2                  # u16: shadow reads left before the next guard check
        .set PCPU_MISMATCHES, 4             # u32: guard checks that found the shadow stale
        .set PCPU_SIZE, 8
        .set PCPU_MAX, 32                   # 32-bit Windows runs at most 32 processors

# Per-CPU access counters (u32, wrapping; the host reads them about once a second and adds the
# differences), indexed like the per-CPU area and kept right after it, so that a handler holding
# the entry pointer in ebx reaches its counters at PCPU_STATS_DELTA(%ebx). Written only by the
# CPU they belong to, with interrupts off: no lock, no sharing.
        .globl PCPU_STAT_NO_APIC, PCPU_STAT_APIC, PCPU_STAT_SIZE, PCPU_STATS_DELTA
        .set PCPU_STAT_NO_APIC, 0           # served without the APIC's MMIO register: shadow
                                            # reads (mmio fast path, cr8), CR8 writes (cr8)
        .set PCPU_STAT_APIC, 4              # made to the APIC's MMIO register by the handlers:
                                            # exact reads and writes, mmio writes, guard checks
        .set PCPU_STAT_SIZE, 8
        .set PCPU_STATS_DELTA, PCPU_MAX * PCPU_SIZE

# Site table entry, indexed by the site id. An all-zero entry (length 0) is unused.
        .globl SITE_VA, SITE_LENGTH, SITE_FORM, SITE_REG, SITE_STATE, SITE_ORIGINAL, SITE_PATCHED
        .globl SITE_BYTES_MAX, SITE_SIZE, SITE_MAX
        .set SITE_VA, 0                     # u32 guest virtual address of the instruction
        .set SITE_LENGTH, 4                 # u8 instruction length (5, 6, 7 or 10)
        .set SITE_FORM, 5                   # u8 engine::Form
        .set SITE_REG, 6                    # u8 engine::Gpr
        .set SITE_STATE, 7                  # u8 engine::SiteState
        .set SITE_BYTES_MAX, 10
        .set SITE_ORIGINAL, 8               # u8[10] original bytes
        .set SITE_PATCHED, 18               # u8[10] replacement bytes
        .set SITE_SIZE, 28
        .set SITE_MAX, 256

        .globl HANDLER_COUNT
        .set HANDLER_COUNT, 12

# ---- header (immutable after install) -----------------------------------------------------
        .globl blob_start
        .globl hdr_magic, hdr_layout_version, hdr_header_size, hdr_blob_size, hdr_checksum
        .globl hdr_immutable_size, hdr_blob_va, hdr_blob_pa, hdr_tpr_va, hdr_cpu_count
        .globl hdr_guard_period, hdr_strategy_offset, hdr_code_offset, hdr_code_end_offset
        .globl hdr_percpu_offset, hdr_percpu_entry_size, hdr_percpu_max, hdr_sites_offset
        .globl hdr_site_entry_size, hdr_sites_max, hdr_handler_count, hdr_handlers
blob_start:
hdr_magic:              .long MAGIC
hdr_layout_version:     .long LAYOUT_VERSION
hdr_header_size:        .long HEADER_SIZE
hdr_blob_size:          .long TOTAL_SIZE
hdr_checksum:           .long 0                 # CRC-32 of [0, immutable_size), this field 0
hdr_immutable_size:     .long DATA_OFFSET
hdr_blob_va:            .long blob_start        # base relocation
hdr_blob_pa:            .long 0                 # set at install
hdr_tpr_va:             .long tpr_va            # TPR relocation
hdr_cpu_count:          .long 0                 # set at install; <= PCPU_MAX
hdr_guard_period:       .long DEFAULT_GUARD_PERIOD
hdr_strategy_offset:    .long strategy_word - blob_start
hdr_code_offset:        .long code_start - blob_start
hdr_code_end_offset:    .long code_end - blob_start
hdr_percpu_offset:      .long percpu_area - blob_start
hdr_percpu_entry_size:  .long PCPU_SIZE
hdr_percpu_max:         .long PCPU_MAX
hdr_sites_offset:       .long site_table - blob_start
hdr_site_entry_size:    .long SITE_SIZE
hdr_sites_max:          .long SITE_MAX
hdr_handler_count:      .long HANDLER_COUNT
# Handler virtual addresses (base relocations), in engine::HandlerTable order:
# set_tpr, set_tpr_eax, get_tpr[eax ecx edx ebx esp ebp esi edi], get_tpr_stack, and_tpr_zero.
hdr_handlers:
        .long set_tpr, set_tpr_eax
        .long get_tpr_eax, get_tpr_ecx, get_tpr_edx, get_tpr_ebx, 0
        .long get_tpr_ebp, get_tpr_esi, get_tpr_edi
        .long get_tpr_stack
        .long and_tpr_zero
        .if . - blob_start != HEADER_SIZE
        .error "header size changed: update HEADER_SIZE"
        .endif

# ---- handler code -------------------------------------------------------------------------
# Contract for every entry point: returns only the register it names (the stack slot for
# get_tpr_stack), preserves every other register and EFLAGS (and_tpr_zero: every register, and
# EFLAGS but for the six status flags, which it sets as the `and` it replaces), balances the
# stack (set_tpr also pops its argument), and never stores into this page.
        .globl code_start, code_end
        .globl set_tpr, set_tpr_eax, get_tpr_stack, and_tpr_zero
        .globl get_tpr_eax, get_tpr_ecx, get_tpr_edx, get_tpr_ebx
        .globl get_tpr_ebp, get_tpr_esi, get_tpr_edi
        .globl tpr_read_slow, tpr_write_core

        .balign 16
code_start:

# push value; call set_tpr          (sites: mov [tpr],r32 and mov dword [tpr],imm32)
set_tpr:
        pushl   %eax
        movl    8(%esp), %eax           # [esp]=eax, [esp+4]=return, [esp+8]=value
        call    tpr_write_core
        popl    %eax
        ret     $4

# call set_tpr_eax                  (site: mov [tpr],eax)
set_tpr_eax:
        call    tpr_write_core
        ret

# 66 90; call and_tpr_zero          (site: and dword [tpr],0; 66 90 is a 2-byte nop)
# Writes 0 like any TPR write, and leaves the flags the `and` would: its result is 0, so
# CF=OF=SF=0, ZF=PF=1, and AF=0 (undefined for `and` in the manuals; 0 is what QEMU's TCG gives
# it, CC_OP_LOGICL). `sub eax,eax` sets exactly those six (sub defines AF: no borrow, 0) and
# zeroes the value; tpr_write_core keeps EFLAGS, so they survive the call. IF, DF, TF and every
# register stay the caller's.
and_tpr_zero:
        pushl   %eax
        subl    %eax, %eax              # eax = 0; CF OF SF AF = 0, ZF PF = 1
        call    tpr_write_core
        popl    %eax                    # pop and ret leave the flags alone
        ret

# Reads. Every get_tpr_<dest> holds its own fast path, with the destination register as the
# CPU index, so the common case (mmio, enabled CPU, guard not due) is one call, no inner call,
# no register saved but the flags, and one ret: under TCG every call/ret/popf ends a translation
# block, and the rets and the popf are the expensive ones (docs/performance.md).
#   pushf; cli                          stay on this CPU between fs:[0x51] and its entry
#   dest = fs:[0x51]; in range; enabled; strategy word is mmio
#   entry.guard -= 1; above 0          (down-counting guard: 0 or 1 before = check now)
#   dest = entry.shadow; popf; ret
# Anything else goes, still under the cli, to tpr_read_slow (exact, cr8, guard check) or to a
# plain MMIO read (CPU out of range or not enabled).
        .macro  GET_TPR_FAST dest, slow, real
        pushfl
        cli
        movzbl  %fs:KPCR_PROCESSOR_NUMBER, \dest
        cmpl    hdr_cpu_count, \dest
        jae     \real
        cmpb    $0, percpu_area+PCPU_ENABLED(,\dest,8)   # 8 = PCPU_SIZE (checked below)
        je      \real
        cmpl    $STRATEGY_MMIO, strategy_word
        jne     \slow
        subw    $1, percpu_area+PCPU_READS(,\dest,8)
        jbe     \slow                   # was 1 (due) or 0 (fresh entry): check now
        incl    percpu_stats+PCPU_STAT_NO_APIC(,\dest,8)   # 8 = PCPU_STAT_SIZE (checked below)
        movzbl  percpu_area+PCPU_SHADOW(,\dest,8), \dest
        .endm

# call get_tpr_eax                  (site: mov eax,[tpr])
get_tpr_eax:
        GET_TPR_FAST %eax, .Lget_eax_slow, .Lget_eax_real
        popfl
        ret
.Lget_eax_slow:
        call    tpr_read_slow
        popfl
        ret
.Lget_eax_real:
        movl    tpr_va, %eax
        popfl
        ret

# nop; call get_tpr_<reg>           (site: mov r32,[tpr]); esp is never a destination
        .macro  GET_TPR_INTO reg
get_tpr_\reg:
        GET_TPR_FAST %\reg, .Lget_\reg\()_slow, .Lget_\reg\()_real
        popfl
        ret
.Lget_\reg\()_slow:
        pushl   %eax
        movl    %\reg, %eax
        call    tpr_read_slow
        movl    %eax, %\reg
        popl    %eax
        popfl
        ret
.Lget_\reg\()_real:
        movl    tpr_va, %\reg
        popfl
        ret
        .endm
        GET_TPR_INTO ecx
        GET_TPR_INTO edx
        GET_TPR_INTO ebx
        GET_TPR_INTO ebp
        GET_TPR_INTO esi
        GET_TPR_INTO edi

# push eax; call get_tpr_stack      (site: push dword [tpr])
# Entry: [esp]=return, [esp+4]=the pushed eax (eax itself unchanged). Exit: that slot holds the
# TPR. ecx is the scratch: [esp]=ecx, [esp+4]=flags, [esp+8]=return, [esp+12]=slot.
get_tpr_stack:
        pushfl
        pushl   %ecx
        # GET_TPR_FAST with its pushf done above the ecx save: same body, by hand
        cli
        movzbl  %fs:KPCR_PROCESSOR_NUMBER, %ecx
        cmpl    hdr_cpu_count, %ecx
        jae     .Lget_stack_real
        cmpb    $0, percpu_area+PCPU_ENABLED(,%ecx,8)
        je      .Lget_stack_real
        cmpl    $STRATEGY_MMIO, strategy_word
        jne     .Lget_stack_slow
        subw    $1, percpu_area+PCPU_READS(,%ecx,8)
        jbe     .Lget_stack_slow
        incl    percpu_stats+PCPU_STAT_NO_APIC(,%ecx,8)
        movzbl  percpu_area+PCPU_SHADOW(,%ecx,8), %ecx
.Lget_stack_done:
        movl    %ecx, 12(%esp)
        popl    %ecx
        popfl
        ret
.Lget_stack_slow:
        pushl   %eax
        movl    %ecx, %eax
        call    tpr_read_slow
        movl    %eax, %ecx
        popl    %eax
        jmp     .Lget_stack_done
.Lget_stack_real:
        movl    tpr_va, %ecx
        jmp     .Lget_stack_done

# The reads the fast path does not serve. Called with interrupts off (the caller's cli) and eax =
# this CPU's number, in range and enabled. Returns the TPR in eax; preserves every other register,
# not EFLAGS (the caller restores them).
tpr_read_slow:
        pushl   %ebx
        leal    percpu_area(,%eax,8), %ebx   # 8 = PCPU_SIZE (checked below)
        movl    strategy_word, %eax
        cmpl    $STRATEGY_MMIO, %eax
        je      .Lread_guard
        cmpl    $STRATEGY_CR8, %eax
        je      .Lread_shadow
        # exact (or an unknown word: the safe choice): real read, keep the shadow current
        incl    PCPU_STATS_DELTA+PCPU_STAT_APIC(%ebx)
        movl    tpr_va, %eax
        movb    %al, PCPU_SHADOW(%ebx)
        jmp     .Lread_done
.Lread_guard:
        # mmio, the guard is due: restart its count, then compare the real TPR with the shadow
        movl    hdr_guard_period, %eax
        movw    %ax, PCPU_READS(%ebx)
        incl    PCPU_STATS_DELTA+PCPU_STAT_APIC(%ebx)
        movl    tpr_va, %eax
        movzbl  %al, %eax
        cmpb    %al, PCPU_SHADOW(%ebx)
        je      .Lread_done
        # someone wrote the TPR behind the handlers' back: fix, count, fall back to exact
        movb    %al, PCPU_SHADOW(%ebx)
        incl    PCPU_MISMATCHES(%ebx)
        movl    $STRATEGY_EXACT, strategy_word
        jmp     .Lread_done
.Lread_shadow:
        incl    PCPU_STATS_DELTA+PCPU_STAT_NO_APIC(%ebx)
        movzbl  PCPU_SHADOW(%ebx), %eax
.Lread_done:
        popl    %ebx
        ret

# Writes eax to the TPR: the real register first (by strategy), then the shadow. That order
# lets the host set a stopped CPU's shadow from its real TPR at any instruction boundary (a
# CPU stopped between the two stores gets the new value either way; docs/design.md "mmio").
# The MMIO store goes through tpr_write_va, which tprd points at a second mapping of the APIC
# page under mmio, so that a write watchpoint on the TPR's own address sees only unpatched
# writers. Preserves every register and EFLAGS.
tpr_write_core:
        pushfl
        cli
        pushl   %ebx
        movzbl  %fs:KPCR_PROCESSOR_NUMBER, %ebx
        cmpl    hdr_cpu_count, %ebx
        jae     .Lwrite_plain
        leal    percpu_area(,%ebx,8), %ebx   # 8 = PCPU_SIZE (checked below)
        cmpb    $0, PCPU_ENABLED(%ebx)
        je      .Lwrite_plain
        cmpl    $STRATEGY_CR8, strategy_word
        jne     .Lwrite_mmio            # mmio, exact and unknown words all write the MMIO TPR
        pushl   %eax
        movzbl  %al, %eax
        shrl    $4, %eax                # CR8 = TPR[7:4]
        .byte   0xF0, 0x0F, 0x22, 0xC0  # lock mov cr0, eax = mov cr8, eax (AMD AltMovCr8)
        popl    %eax
        incl    PCPU_STATS_DELTA+PCPU_STAT_NO_APIC(%ebx)
        jmp     .Lwrite_shadow
.Lwrite_mmio:
        incl    PCPU_STATS_DELTA+PCPU_STAT_APIC(%ebx)
        pushl   %ecx
        movl    tpr_write_va, %ecx
        movl    %eax, (%ecx)
        popl    %ecx
.Lwrite_shadow:
        movb    %al, PCPU_SHADOW(%ebx)
        jmp     .Lwrite_done
.Lwrite_plain:
        pushl   %ecx
        movl    tpr_write_va, %ecx
        movl    %eax, (%ecx)
        popl    %ecx
.Lwrite_done:
        popl    %ebx
        popfl
        ret

# Never called by the guest. Leaving cr8, tprd points a stopped CPU's eip here with eax = its
# shadow and steps this one instruction (interrupts off), then restores eip, eax and EFLAGS: the
# real TPR gets back the low nibble the CR8 writes cleared (debug writes do not reach the APIC).
        .globl tpr_poke
tpr_poke:
        movl    %eax, tpr_va
        int3                            # never reached: one step, then eip is restored

code_end:
        # (overflowing the code page makes the .org below fail: "attempt to move .org backwards")

# ---- header extension (immutable, checksummed; after the code so handler offsets stay) ----
# The data block [strategy_word, site_table) is the only part the handlers write. It may be
# placed apart from the rest (RAM, while the image sits in read-only shadowed memory): every
# absolute reference into it, this field included, is relocated with the data block's base.
        .globl hdr_data_va, hdr_data_pa
        .balign 4
hdr_data_va:            .long strategy_word     # base relocation (data block base)
hdr_data_pa:            .long 0                 # set at install

# ---- writable data (pages 1-2) ------------------------------------------------------------
        .globl strategy_word, tpr_write_va, percpu_area, percpu_stats, site_table, blob_end
        .org    DATA_OFFSET, 0
strategy_word:
        .long   STRATEGY_EXACT          # set at install; the mmio guard may store EXACT here
tpr_write_va:
        .long   tpr_va                  # TPR relocation; tprd may point it at an alias of the
                                        # TPR (same physical APIC register, another page)
        .balign 64, 0
percpu_area:
        .fill   PCPU_MAX * PCPU_SIZE, 1, 0
percpu_stats:
        .fill   PCPU_MAX * PCPU_STAT_SIZE, 1, 0
site_table:
        .fill   SITE_MAX * SITE_SIZE, 1, 0
        .org    TOTAL_SIZE, 0
blob_end:
        .if PCPU_SIZE != 8 || PCPU_STAT_SIZE != 8
        .error "the handlers scale the CPU number by 8: update them"
        .endif
        .if percpu_stats - percpu_area != PCPU_STATS_DELTA
        .error "percpu_stats must follow percpu_area: the handlers reach it from the entry"
        .endif
