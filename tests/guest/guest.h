/* Shared definitions of the tpr-test-guest (freestanding, i386). Also included by the
 * assembly files (only the #defines outside __ASSEMBLER__). */
#ifndef TPRD_TESTS_GUEST_GUEST_H_
#define TPRD_TESTS_GUEST_GUEST_H_

#define KERNEL_OFFSET 0x80000000
#define TPR_VA 0xFFFE0080
#define APIC_VA 0xFFFE0000
#define APIC_PHYS 0xFEE00000
#define MAX_CPUS 4
#define STACK_SIZE 16384
#define TRAMPOLINE_PHYS 0x8000

/* GDT selectors, as Windows uses them. */
#define SEL_CODE 0x08
#define SEL_DATA 0x10
#define SEL_KPCR 0x30

/* KPCR layout: the fields tprd relies on are at Windows' offsets. */
#define KPCR_SELF 0x1C
#define KPCR_PRCB 0x20
#define KPCR_NUMBER 0x51
#define KPCR_PRCB_OFFSET 0x120
/* Private scratch used by the site wrappers (fs-relative, so per CPU). */
#define KPCR_SCRATCH_ESP 0x800
#define KPCR_SCRATCH_FLAGS 0x804
#define KPCR_SCRATCH_GOTFLAGS 0x808
#define KPCR_SCRATCH_CLOBBER 0x80C
#define KPCR_SCRATCH_PUSHED 0x810
#define KPCR_SIZE 0x1000

/* Site kinds in the boot-time SITE table. */
#define SITE_PATCHABLE 1
#define SITE_UNPATCHABLE 2
#define SITE_DECOY 3

#ifndef __ASSEMBLER__
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef int int32_t;
typedef unsigned int size_t;

#define NORETURN __attribute__((noreturn))

struct site_entry {
  uint32_t va;
  const char* name;
  const char* form;
  const char* reg;
  uint32_t kind;
};
extern const struct site_entry site_table_start[];
extern const struct site_entry site_table_end[];

/* Page-table roots built by the identity-mapped boot code (boot_paging.c). */
struct boot_paging {
  uint32_t cr3;
  uint32_t cr4;
  uint32_t ram_mapped_bytes;
};
extern struct boot_paging boot_paging_result; /* physical address; see kernel.c */

/* Wrappers around the sites (tpr_sites.S): each loads sentinels into every other register
 * and a flags pattern, runs one TPR-access site, and increments fs:[KPCR_SCRATCH_CLOBBER]
 * when a register, ESP or EFLAGS changed. */
typedef uint32_t (*tpr_reader_fn)(uint32_t flags);
typedef void (*tpr_writer_fn)(uint32_t value, uint32_t flags);
struct tpr_reader {
  const char* name;
  tpr_reader_fn fn;
};
struct tpr_writer {
  const char* name;
  tpr_writer_fn fn;
};
struct tpr_imm_writer {
  const char* name;
  void (*fn)(uint32_t flags);
  uint32_t value;
};

/* Windows-HAL-shaped functions (fastcall: argument in ecx). */
__attribute__((fastcall)) uint32_t KfRaiseIrql_tprg(uint32_t new_tpr);
__attribute__((fastcall)) void KfLowerIrql_tprg(uint32_t new_tpr);
uint32_t KeGetCurrentIrql_tprg(void);

uint32_t bench_tpr_read(uint32_t iterations);
void bench_tpr_write(uint32_t iterations, uint32_t value);
uint32_t bench_mem_read(uint32_t iterations);
void bench_mem_write(uint32_t iterations, uint32_t value);

/* Rarely-run forms that must not be patched; each returns what it read. */
uint32_t unpatchable_regrel_read(void);          /* mov eax,[ecx+0x80], ecx=0xFFFE0000 */
uint32_t unpatchable_cmp_imm(uint32_t expected); /* cmp dword [tpr],imm: 1 if equal */
uint32_t unpatchable_es_read(void);              /* 26 8B 15: es: mov edx,[tpr] */
uint32_t unpatchable_ds_read(void);              /* 3E A1 */
void unpatchable_regrel_write(uint32_t value);   /* mov [ecx+0x80],edx; only with regwrite */
uint32_t late_site_read(uint32_t flags);         /* first runs after late=<s> */

extern const struct tpr_reader tpr_readers[];
extern const uint32_t tpr_reader_count;
extern const struct tpr_writer tpr_writers[];
extern const uint32_t tpr_writer_count;
extern const struct tpr_imm_writer tpr_imm_writers[];
extern const uint32_t tpr_imm_writer_count;

void ap_trampoline_start(void);
void ap_trampoline_end(void);
extern uint32_t ap_trampoline_cr3, ap_trampoline_cr4, ap_trampoline_stacks, ap_trampoline_ticket,
    ap_trampoline_entry;

void idt_install_stubs(uint32_t* idt_base); /* isr.S */
#endif

#endif /* TPRD_TESTS_GUEST_GUEST_H_ */
