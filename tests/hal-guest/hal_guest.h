/* hal-guest: a second, independent XP-like SMP test guest whose TPR traffic comes from
 * functions shaped like real Windows HAL code (see docs/hal-guest.md). Shared declarations. */
#ifndef TPRD_TESTS_HAL_GUEST_HAL_GUEST_H_
#define TPRD_TESTS_HAL_GUEST_HAL_GUEST_H_

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, type) __builtin_va_arg(ap, type)
#define va_end(ap) __builtin_va_end(ap)

#define MAX_CPUS 8
#define STACK_SIZE 16384
#define KERNEL_OFFSET 0x80000000u
#define APIC_VA 0xFFFE0000u
#define TPR_VA 0xFFFE0080u
#define LEGACY_VA 0x800C0000u
#define TRAMP_PHYS 0x8000u
#define NOPEND 0xFFFFFFFFu
#define MAX_FAILS_PRINTED 50

/* Local APIC registers (offsets from APIC_VA). Offset 0x80 (TPR) is never touched from C:
 * every TPR access goes through the HAL-shaped functions in hal_templates.S. */
#define APIC_ID 0x020
#define APIC_EOI 0x0B0
#define APIC_SVR 0x0F0
#define APIC_ISR 0x100
#define APIC_IRR 0x200
#define APIC_ICR_LO 0x300
#define APIC_ICR_HI 0x310
#define APIC_LVT_TIMER 0x320
#define APIC_LVT_THERMAL 0x330
#define APIC_LVT_PERF 0x340
#define APIC_LVT_LINT0 0x350
#define APIC_LVT_LINT1 0x360
#define APIC_LVT_ERROR 0x370
#define APIC_TICR 0x380
#define APIC_TCCR 0x390
#define APIC_TDCR 0x3E0

/* Interrupt vectors (Windows XP's APIC HAL uses 0xD1 for the clock and 0xE1 for IPIs). */
#define VEC_TIMER 0xD1
#define VEC_IPI 0xE1
#define VEC_SPURIOUS 0xFF
#define NUM_TEST_VECTORS 7

/* Per-CPU state of the guest (not part of the KPCR). */
struct cpu {
  u32 index;
  u32 apic_id;
  u8* kpcr;
  /* TPR bookkeeping: `last` is what this CPU last wrote; `pending` is the value of a write in
   * progress (NOPEND when none). An interrupt saves both and restores them on exit. */
  volatile u32 last;
  volatile u32 pending;
  u32 rng;
  /* Counters reported by STAT. */
  volatile u32 rounds, tpr_reads, wrong_reads, mask_violations, lost_interrupts;
  volatile u32 timer_ticks, ipis, rare_runs, spurious, fails, idles;
  volatile u32 vec_count[NUM_TEST_VECTORS];
  u32 vec_expect[NUM_TEST_VECTORS];
  u32 ipi_target;
  u64 next_stat_tsc, next_rare_tsc;
  u32 mask_tests;
  u32 injected;
  volatile u32 in_exception;
  u32 decoy_sum; /* the decoy page's checksum at this CPU's start */
};

/* kernel.c */
extern struct cpu cpus[MAX_CPUS];
extern u32 online_cpus;
extern u32 expected_cpus;
extern u32 tsc_khz;
extern u64 tsc_boot;
extern u32 seed;
extern u32 idle_heavy;  /* idle=heavy: halted most of the time (docs/hal-guest.md) */
extern u32 regrel_off;  /* regrel=off: the register-relative path never runs */
extern u32 inject_mode; /* 0 none, 1 stale, 2 book, 3 fault, 4 df (see docs/hal-guest.md) */
const char* inject_name(void);

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) {
  u8 v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline u64 rdtsc(void) {
  u32 lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((u64)hi << 32) | lo;
}
static inline void cpu_pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void irq_enable(void) { __asm__ volatile("sti" ::: "memory"); }
static inline u32 irq_save(void) {
  u32 f;
  __asm__ volatile("pushfl; popl %0; cli" : "=r"(f)::"memory");
  return f;
}
static inline void irq_restore(u32 f) {
  __asm__ volatile("pushl %0; popfl" ::"r"(f) : "memory", "cc");
}
/* One instruction, so atomic against this CPU's interrupts (counters are per CPU). */
static inline void inc(volatile u32* p) { __asm__ volatile("incl %0" : "+m"(*p)); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline u32 apic_read(u32 off) { return *(volatile u32*)(APIC_VA + off); }
static inline void apic_write(u32 off, u32 v) { *(volatile u32*)(APIC_VA + off) = v; }
/* The CPU number as Windows finds it: the byte at KPCR+0x51, through FS. */
static inline u32 fs_cpu_number(void) {
  u32 n;
  __asm__ volatile("movzbl %%fs:0x51, %0" : "=r"(n));
  return n;
}
static inline struct cpu* this_cpu(void) { return &cpus[fs_cpu_number()]; }

/* n / d for a 64-bit n whose quotient fits 32 bits (no libgcc in a freestanding guest). */
static inline u32 div64_32(u64 n, u32 d) {
  u32 hi = (u32)(n >> 32), lo = (u32)n, q, r;
  if (hi >= d) return 0xFFFFFFFFu;
  __asm__("divl %4" : "=a"(q), "=d"(r) : "a"(lo), "d"(hi), "rm"(d));
  return q;
}

void* memset(void* dst, int c, u32 n);
void* memcpy(void* dst, const void* src, u32 n);
void print_line(const char* fmt, ...);
u32 uptime_ms(void);
void delay_us(u32 us);
void send_ipi(u32 apic_id, u32 icr_lo);
/* Prints a FAIL line (the first MAX_FAILS_PRINTED per CPU); report_fail_vec adds vector=. */
void report_fail(struct cpu* c, const char* check, u32 expected, u32 got, u32 eip);
void report_fail_vec(struct cpu* c, const char* check, u32 vector, u32 expected, u32 got, u32 eip);
__attribute__((noreturn)) void halt_forever(void);

/* workload.c */
void hal_layout_init(void); /* BSP: picks the variant, copies the HAL functions */
void hal_print_boot_info(void);
u32 hal_code_start(void);
u32 hal_code_end(void);
void hal_cpu_init(struct cpu* c); /* each CPU, interrupts off: TPR to 0 */
u32 hal_timer_hz(void);
void apic_timer_start(u32 hz); /* kernel.c: periodic local APIC timer */
__attribute__((noreturn)) void cpu_run(struct cpu* c);

/* Interrupt frame built by isr_common in entry.S. */
struct frame {
  u32 edi, esi, ebp, esp0, ebx, edx, ecx, eax;
  u32 vector, error;
  u32 eip, cs, eflags;
};
void interrupt_entry(struct cpu* c, struct frame* f);

#endif /* TPRD_TESTS_HAL_GUEST_HAL_GUEST_H_ */
