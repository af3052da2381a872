/* tpr-test-guest kernel: brings up an XP-like environment (KPCR per CPU at fs, APIC at
 * 0xFFFE0000, up to MAX_CPUS CPUs) and runs the TPR self-checks, the benchmark and the
 * optional handler self-test forever. Output: machine-readable lines on COM1 (see
 * docs/test-guest.md). Never relies on anything it does not check first. */
#include "kernel.h"

#include "guest.h"

/* ---- Low-level helpers ---- */

void* memset(void* dst, int value, size_t n) {
  uint8_t* d = dst;
  for (size_t i = 0; i < n; ++i) d[i] = (uint8_t)value;
  return dst;
}

void* memcpy(void* dst, const void* src, size_t n) {
  uint8_t* d = dst;
  const uint8_t* s = src;
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
  return dst;
}

/* 64-by-32 division without libgcc: two divl steps. */
uint64_t udiv64(uint64_t n, uint32_t d) {
  if (d == 0) return 0;
  uint32_t hi = (uint32_t)(n >> 32), lo = (uint32_t)n;
  uint32_t q_hi = hi / d, r = hi % d, q_lo;
  __asm__("divl %2" : "=a"(q_lo), "+d"(r) : "rm"(d), "a"(lo));
  return ((uint64_t)q_hi << 32) | q_lo;
}

static inline void spin_lock(volatile uint32_t* lock) {
  uint32_t one = 1;
  for (;;) {
    __asm__ volatile("xchgl %0, %1" : "+r"(one), "+m"(*lock) : : "memory");
    if (one == 0) return;
    while (*lock) __asm__ volatile("pause");
    one = 1;
  }
}

static inline void spin_unlock(volatile uint32_t* lock) {
  __asm__ volatile("" ::: "memory");
  *lock = 0;
}

/* ---- Serial (COM1) ---- */

#define COM1 0x3F8
static volatile uint32_t serial_lock;

static void serial_init(void) {
  outb(COM1 + 1, 0x00);
  outb(COM1 + 3, 0x80);
  outb(COM1 + 0, 0x01); /* 115200 baud */
  outb(COM1 + 1, 0x00);
  outb(COM1 + 3, 0x03); /* 8N1 */
  outb(COM1 + 2, 0xC7);
  outb(COM1 + 4, 0x0B);
}

static void serial_putc(char c) {
  for (uint32_t spins = 0; spins < 100000 && !(inb(COM1 + 5) & 0x20); ++spins) {
  }
  outb(COM1, (uint8_t)c);
}

struct line {
  char buf[256];
  uint32_t len;
};

static void line_char(struct line* l, char c) {
  if (l->len < sizeof(l->buf) - 2) l->buf[l->len++] = c;
}

static void line_str(struct line* l, const char* s) {
  while (*s) line_char(l, *s++);
}

static void line_num(struct line* l, uint64_t v, uint32_t base, uint32_t min_digits) {
  char tmp[24];
  uint32_t n = 0;
  do {
    uint64_t q = udiv64(v, base);
    uint32_t digit = (uint32_t)(v - q * base);
    tmp[n++] = (char)(digit < 10 ? '0' + digit : 'a' + digit - 10);
    v = q;
  } while (v && n < sizeof(tmp));
  while (n < min_digits && n < sizeof(tmp)) tmp[n++] = '0';
  while (n) line_char(l, tmp[--n]);
}

/* Tiny printf: %s %u %x %X(=0x%08x) %U(uint64 decimal) %c. One line is sent whole under the
 * lock, so lines of different CPUs never interleave. */
void kprintf(const char* fmt, ...) {
  struct line l;
  l.len = 0;
  __builtin_va_list ap;
  __builtin_va_start(ap, fmt);
  for (const char* p = fmt; *p; ++p) {
    if (*p != '%') {
      line_char(&l, *p);
      continue;
    }
    ++p;
    switch (*p) {
      case 's':
        line_str(&l, __builtin_va_arg(ap, const char*));
        break;
      case 'u':
        line_num(&l, __builtin_va_arg(ap, uint32_t), 10, 1);
        break;
      case 'x':
        line_num(&l, __builtin_va_arg(ap, uint32_t), 16, 1);
        break;
      case 'X':
        line_str(&l, "0x");
        line_num(&l, __builtin_va_arg(ap, uint32_t), 16, 8);
        break;
      case 'U':
        line_num(&l, __builtin_va_arg(ap, uint64_t), 10, 1);
        break;
      case 'c':
        line_char(&l, (char)__builtin_va_arg(ap, int));
        break;
      case '%':
        line_char(&l, '%');
        break;
      default:
        line_char(&l, '?');
        --p;
        break;
    }
    if (!*p) break;
  }
  __builtin_va_end(ap);
  spin_lock(&serial_lock);
  for (uint32_t i = 0; i < l.len; ++i) serial_putc(l.buf[i]);
  serial_putc('\n');
  spin_unlock(&serial_lock);
}

/* ---- Time ---- */

static uint32_t tsc_khz = 1000000;
static uint64_t boot_tsc;

/* Calibrates the TSC against PIT channel 2 (50 ms, bounded poll). */
static void calibrate_tsc(void) {
  const uint32_t pit_hz = 1193182, count = pit_hz / 20;
  outb(0x61, (uint8_t)((inb(0x61) & ~0x02) | 0x01));
  outb(0x43, 0xB0);
  outb(0x42, (uint8_t)(count & 0xFF));
  outb(0x42, (uint8_t)(count >> 8));
  uint64_t start = rdtsc();
  uint32_t polls = 0;
  while (!(inb(0x61) & 0x20) && polls < 50000000) ++polls;
  uint64_t elapsed = rdtsc() - start;
  if (polls < 50000000 && elapsed > 1000) tsc_khz = (uint32_t)udiv64(elapsed, 50);
}

uint64_t uptime_ms(void) { return udiv64(rdtsc() - boot_tsc, tsc_khz); }

uint64_t ms_to_tsc(uint32_t ms) { return (uint64_t)tsc_khz * ms; }

void delay_ms(uint32_t ms) {
  uint64_t end = rdtsc() + ms_to_tsc(ms);
  while (rdtsc() < end) __asm__ volatile("pause");
}

/* ---- APIC ---- */

uint32_t apic_read(uint32_t reg) { return *(volatile uint32_t*)(APIC_VA + reg); }
void apic_write(uint32_t reg, uint32_t value) { *(volatile uint32_t*)(APIC_VA + reg) = value; }

static void apic_wait_icr_idle(void) {
  for (uint32_t spins = 0; spins < 1000000 && (apic_read(0x300) & 0x1000); ++spins) {
    __asm__ volatile("pause");
  }
}

/* ---- Descriptor tables and per-CPU state ---- */

static uint8_t kpcrs[MAX_CPUS][KPCR_SIZE] __attribute__((aligned(4096)));
static uint64_t gdts[MAX_CPUS][8] __attribute__((aligned(64)));
static uint64_t idt[256] __attribute__((aligned(4096)));
uint8_t cpu_stacks[MAX_CPUS][STACK_SIZE] __attribute__((aligned(4096)));
struct cpu_state cpus[MAX_CPUS];
extern const uint8_t isr_stubs[];

static volatile uint32_t cpus_online;
volatile uint32_t boot_done;
static uint32_t cpus_expected;
struct boot_options options;

static uint64_t segment_descriptor(uint32_t base, uint32_t limit, uint32_t access, uint32_t flags) {
  uint64_t d = limit & 0xFFFF;
  d |= (uint64_t)(base & 0xFFFFFF) << 16;
  d |= (uint64_t)(access & 0xFF) << 40;
  d |= (uint64_t)((limit >> 16) & 0xF) << 48;
  d |= (uint64_t)(flags & 0xF) << 52;
  d |= (uint64_t)(base >> 24) << 56;
  return d;
}

static void idt_init(void) {
  for (uint32_t v = 0; v < 256; ++v) {
    uint32_t handler = (uint32_t)isr_stubs + 16 * v;
    idt[v] = (handler & 0xFFFF) | ((uint64_t)SEL_CODE << 16) | ((uint64_t)0x8E00 << 32) |
             ((uint64_t)(handler >> 16) << 48);
  }
}

/* Loads this CPU's own GDT (selector 0x30 = its KPCR, as on Windows), the shared IDT, and
 * enables its local APIC. */
static void cpu_setup(uint32_t number) {
  uint8_t* kpcr = kpcrs[number];
  *(uint32_t*)(kpcr + KPCR_SELF) = (uint32_t)kpcr;
  *(uint32_t*)(kpcr + KPCR_PRCB) = (uint32_t)kpcr + KPCR_PRCB_OFFSET;
  *(uint32_t*)(kpcr + 0x38) = (uint32_t)idt;
  *(uint32_t*)(kpcr + 0x3C) = (uint32_t)gdts[number];
  kpcr[KPCR_NUMBER] = (uint8_t)number;
  uint64_t* gdt = gdts[number];
  gdt[1] = segment_descriptor(0, 0xFFFFF, 0x9A, 0xC);
  gdt[2] = segment_descriptor(0, 0xFFFFF, 0x92, 0xC);
  gdt[6] = segment_descriptor((uint32_t)kpcr, KPCR_SIZE - 1, 0x92, 0x4);
  struct __attribute__((packed)) {
    uint16_t limit;
    uint32_t base;
  } gdtr = {sizeof(gdts[0]) - 1, (uint32_t)gdt}, idtr = {sizeof(idt) - 1, (uint32_t)idt};
  __asm__ volatile(
      "lgdtl %0\n\t"
      "ljmpl %2, $1f\n"
      "1:\n\t"
      "movw %w3, %%ax\n\t"
      "movw %%ax, %%ds\n\t"
      "movw %%ax, %%es\n\t"
      "movw %%ax, %%ss\n\t"
      "movw %%ax, %%gs\n\t"
      "movw %w4, %%ax\n\t"
      "movw %%ax, %%fs\n\t"
      "lidtl %1\n\t"
      :
      : "m"(gdtr), "m"(idtr), "i"(SEL_CODE), "i"(SEL_DATA), "i"(SEL_KPCR)
      : "eax", "memory");
  apic_write(0xF0, 0x100 | 0xFF); /* software-enable, spurious vector 0xFF */
  apic_write(0x80, 0);
  cpus[number].kpcr = (uint32_t)kpcr;
}

uint32_t current_cpu(void) {
  uint8_t number;
  __asm__ volatile("movb %%fs:%c1, %0" : "=q"(number) : "i"(KPCR_NUMBER));
  return number;
}

uint32_t fs_scratch_clobber(void) {
  uint32_t v;
  __asm__ volatile("movl %%fs:%c1, %0" : "=r"(v) : "i"(KPCR_SCRATCH_CLOBBER));
  return v;
}

/* ---- Interrupts ---- */

void isr_dispatch(struct isr_frame* frame) {
  uint32_t cpu = current_cpu();
  if (frame->vector < 32) {
    uint32_t cr2;
    __asm__ volatile("movl %%cr2, %0" : "=r"(cr2));
    kprintf("FAIL cpu=%u check=exception expected=none got=vector%u eip=%X error=%X cr2=%X", cpu,
            frame->vector, frame->eip, frame->error, cr2);
    for (;;) __asm__ volatile("cli; hlt");
  }
  if (cpu < MAX_CPUS) ++cpus[cpu].irq_count[frame->vector];
  if (frame->vector != 0xFF) apic_write(0xB0, 0);
}

/* ---- Boot options and machine discovery ---- */

static int token_at(const char* p, const char* token, const char** value) {
  const char* t = token;
  while (*t && *p == *t) ++p, ++t;
  if (*t) return 0;
  if (*p == '=') {
    *value = p + 1;
    return 1;
  }
  if (*p == 0 || *p == ' ') {
    *value = 0;
    return 1;
  }
  return 0;
}

static uint32_t parse_uint(const char* p) {
  uint32_t v = 0;
  while (p && *p >= '0' && *p <= '9' && v < 100000000) v = v * 10 + (uint32_t)(*p++ - '0');
  return v;
}

static void parse_cmdline(const char* cmdline) {
  options.late_seconds = 0;
  options.late_enabled = 0;
  for (const char* p = cmdline; p && *p; ++p) {
    if (p != cmdline && p[-1] != ' ') continue;
    const char* value;
    if (token_at(p, "late", &value) && value) {
      options.late_enabled = 1;
      options.late_seconds = parse_uint(value);
    } else if (token_at(p, "selftest", &value)) {
      options.selftest = 1;
    } else if (token_at(p, "regwrite", &value)) {
      options.regwrite = 1;
    } else if (token_at(p, "nobench", &value)) {
      options.nobench = 1;
    } else if (token_at(p, "gapwatch", &value)) {
      options.gapwatch = 1;
    }
  }
}

uint32_t online_cpu_count(void) { return cpus_online; }

/* QEMU's pc machine stores the number of boot CPUs minus one in CMOS byte 0x5F. */
static uint32_t cmos_cpu_count(void) {
  outb(0x70, 0x5F);
  uint32_t count = (uint32_t)inb(0x71) + 1;
  return count;
}

/* ---- SMP start ---- */

static uint32_t* trampoline_word(uint32_t* symbol) {
  uint32_t offset = (uint32_t)symbol - (uint32_t)ap_trampoline_start;
  return (uint32_t*)(KERNEL_OFFSET + TRAMPOLINE_PHYS + offset);
}

NORETURN void cpu_main(uint32_t number);

NORETURN void ap_entry(uint32_t number) {
  cpu_setup(number);
  __atomic_add_fetch(&cpus_online, 1, __ATOMIC_SEQ_CST);
  cpu_main(number);
}

static void start_aps(void) {
  uint32_t size = (uint32_t)ap_trampoline_end - (uint32_t)ap_trampoline_start;
  memcpy((void*)(KERNEL_OFFSET + TRAMPOLINE_PHYS), (const void*)ap_trampoline_start, size);
  *trampoline_word(&ap_trampoline_cr3) = boot_paging_result.cr3;
  *trampoline_word(&ap_trampoline_cr4) = boot_paging_result.cr4;
  *trampoline_word(&ap_trampoline_stacks) = (uint32_t)cpu_stacks;
  *trampoline_word(&ap_trampoline_ticket) = 1;
  *trampoline_word(&ap_trampoline_entry) = (uint32_t)ap_entry;
  __asm__ volatile("wbinvd" ::: "memory");
  apic_write(0x310, 0);
  apic_write(0x300, 0x000C4500); /* INIT, all excluding self */
  apic_wait_icr_idle();
  delay_ms(10);
  for (int i = 0; i < 2; ++i) {
    apic_write(0x310, 0);
    apic_write(0x300, 0x000C4600 | (TRAMPOLINE_PHYS >> 12)); /* SIPI */
    apic_wait_icr_idle();
    delay_ms(1);
  }
  /* Wait until every CPU QEMU announced has checked in (bounded). */
  uint32_t wanted = cpus_expected ? cpus_expected : MAX_CPUS;
  uint64_t deadline = rdtsc() + ms_to_tsc(cpus_expected ? 3000 : 500);
  while (cpus_online < wanted && rdtsc() < deadline) __asm__ volatile("pause");
}

/* ---- Entry ---- */

static void print_site_table(void) {
  static const char* const kinds[] = {"?", "patchable", "unpatchable", "decoy"};
  for (const struct site_entry* s = site_table_start; s < site_table_end; ++s) {
    kprintf("SITE name=%s va=%X form=%s reg=%s kind=%s", s->name, s->va, s->form, s->reg,
            kinds[s->kind <= 3 ? s->kind : 0]);
  }
}

extern uint8_t kernel_start[], kernel_end[];

NORETURN void kernel_main(uint32_t magic, uint32_t mbi_phys) {
  serial_init();
  boot_tsc = rdtsc();
  const uint32_t* mbi = 0;
  if (magic == 0x2BADB002 && mbi_phys < 0x10000000)
    mbi = (const uint32_t*)(KERNEL_OFFSET + mbi_phys);
  const char* cmdline = "";
  if (mbi && (mbi[0] & 4) && mbi[4] < 0x10000000) cmdline = (const char*)(KERNEL_OFFSET + mbi[4]);
  parse_cmdline(cmdline);
  if (mbi && (mbi[0] & 8) && mbi[5] > 0 && mbi[6] < 0x10000000) {
    const uint32_t* mod = (const uint32_t*)(KERNEL_OFFSET + mbi[6]);
    options.module_phys = mod[0];
    options.module_size = mod[1] - mod[0];
  }
  /* Mask the 8259s: only the local APIC delivers interrupts here. */
  outb(0x21, 0xFF);
  outb(0xA1, 0xFF);
  idt_init();
  cpu_setup(0);
  calibrate_tsc();
  cpus_online = 1;
  cpus_expected = cmos_cpu_count();
  if (cpus_expected > MAX_CPUS) cpus_expected = MAX_CPUS;
  start_aps();
  char late_text[12] = "off";
  if (options.late_enabled) {
    char digits[12];
    uint32_t n = 0, v = options.late_seconds, o = 0;
    do {
      digits[n++] = (char)('0' + v % 10);
      v /= 10;
    } while (v && n < sizeof(digits));
    while (n) late_text[o++] = digits[--n];
    late_text[o] = 0;
  }
  kprintf(
      "BOOT cpus=%u expected=%u paging=%s kernel=%X-%X kpcr0=%X tpr_va=%X apic_va=%X "
      "legacy_va=%X ram_mapped=%X tsc_khz=%u late=%s mode=%s module=%X+%X",
      cpus_online, cpus_expected,
#ifdef GUEST_PAE
      "pae",
#else
      "nonpae",
#endif
      (uint32_t)kernel_start, (uint32_t)kernel_end, cpus[0].kpcr, TPR_VA, APIC_VA,
      KERNEL_OFFSET + 0xC0000, boot_paging_result.ram_mapped_bytes, tsc_khz, late_text,
      options.selftest ? "selftest" : "normal", options.module_phys, options.module_size);
  kprintf("CMDLINE %s", cmdline);
  print_site_table();
  boot_done = 1;
  cpu_main(0);
}
