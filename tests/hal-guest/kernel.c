/* hal-guest platform code: serial console, per-CPU GDT/TSS/KPCR (FS = 0x30 = KPCR, as
 * Windows XP), IDT, local APIC, TSC/APIC-timer calibration against the PIT, AP start-up with
 * INIT-SIPI-SIPI, interrupt and exception dispatch. The TPR itself is only ever touched by
 * the HAL-shaped functions (workload.c, hal_templates.S). */
#include "hal_guest.h"

struct cpu cpus[MAX_CPUS];
u32 online_cpus = 1;
u32 expected_cpus = 1;
u32 tsc_khz = 1000000;
u64 tsc_boot;
u32 seed = 1;
u32 inject_mode;
u32 idle_heavy;
u32 regrel_off;
static u32 apic_ticks_per_ms = 62500;
static char cmdline[256];
static u8 apic_to_cpu[256];

u8 cpu_stacks[MAX_CPUS][STACK_SIZE] __attribute__((aligned(16)));
static u8 df_stacks[MAX_CPUS][4096] __attribute__((aligned(16)));
static u8 kpcr_pages[MAX_CPUS][4096] __attribute__((aligned(4096)));
static u64 gdts[MAX_CPUS][16] __attribute__((aligned(16)));
static u64 idt[256] __attribute__((aligned(16)));

struct tss {
  u16 link, r0;
  u32 esp0;
  u16 ss0, r1;
  u32 esp1;
  u16 ss1, r2;
  u32 esp2;
  u16 ss2, r3;
  u32 cr3, eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi;
  u16 es, r4, cs, r5, ss, r6, ds, r7, fs, r8, gs, r9, ldt, r10, trap, iomap;
} __attribute__((packed));
static struct tss tss_main[MAX_CPUS], tss_df[MAX_CPUS];

struct dtr {
  u16 limit;
  u32 base;
} __attribute__((packed));

extern u32 boot_mbi, boot_magic, boot_ram_mapped;
extern u8 isr_stubs[];
extern u8 ap_tramp_start[], ap_tramp_end[], tr_cr3[], tr_stack[], tr_entry[];
extern u8 kernel_start[], kernel_end[];
void ap_entry(void);
void df_task_entry(void);
void cpu_load_segments(const struct dtr* gdtr);
void kernel_main(void);
void ap_main(void);
void isr_dispatch(struct frame* f);
void df_main(void);

static volatile u32 ap_alive;
static volatile u32 ap_index;
static volatile u32 go;

/* ------------------------------------------------------------------ libc bits */
void* memset(void* dst, int c, u32 n) {
  void* d = dst;
  __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
  return dst;
}

void* memcpy(void* dst, const void* src, u32 n) {
  void* d = dst;
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
  return dst;
}

__attribute__((noreturn)) void halt_forever(void) {
  for (;;) __asm__ volatile("cli; hlt");
}

/* ------------------------------------------------------------------ serial */
#define COM1 0x3F8

static void serial_init(void) {
  outb(COM1 + 1, 0x00);
  outb(COM1 + 3, 0x80);
  outb(COM1 + 0, 0x01); /* 115200 */
  outb(COM1 + 1, 0x00);
  outb(COM1 + 3, 0x03); /* 8N1 */
  outb(COM1 + 2, 0xC7);
  outb(COM1 + 4, 0x03);
}

static void serial_putc(char ch) {
  for (u32 i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) cpu_pause();
  outb(COM1, (u8)ch);
}

static volatile u32 print_lock;
static volatile u32 print_owner = NOPEND;

struct buf {
  char* p;
  char* end;
};

static void put(struct buf* b, char ch) {
  if (b->p < b->end) *b->p++ = ch;
}

static void put_u(struct buf* b, u32 v, u32 base) {
  char tmp[12];
  int n = 0;
  do {
    u32 d = v % base;
    tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
    v /= base;
  } while (v);
  while (n) put(b, tmp[--n]);
}

void print_line(const char* fmt, ...) {
  char line[512];
  struct buf b = {line, line + sizeof(line) - 1};
  va_list ap;
  va_start(ap, fmt);
  for (const char* f = fmt; *f; f++) {
    if (*f != '%') {
      put(&b, *f);
      continue;
    }
    f++;
    if (*f == 'u') {
      put_u(&b, va_arg(ap, u32), 10);
    } else if (*f == 'x') {
      put_u(&b, va_arg(ap, u32), 16);
    } else if (*f == 's') {
      for (const char* s = va_arg(ap, const char*); *s; s++) put(&b, *s);
    } else if (*f == 'c') {
      put(&b, (char)va_arg(ap, int));
    } else if (*f == '%') {
      put(&b, '%');
    } else {
      break;
    }
  }
  va_end(ap);
  put(&b, '\n');
  u32 n = (u32)(b.p - line);
  /* One line at a time across CPUs; interrupts off so an ISR's FAIL line cannot deadlock
   * against the interrupted code's line. A CPU that faults while printing breaks its lock. */
  u32 flags = irq_save();
  u32 me = apic_read(APIC_ID) >> 24;
  if (print_owner != me) {
    while (__atomic_exchange_n(&print_lock, 1, __ATOMIC_ACQUIRE)) cpu_pause();
  }
  u32 saved_owner = print_owner;
  print_owner = me;
  for (u32 i = 0; i < n; i++) serial_putc(line[i]);
  print_owner = saved_owner;
  if (saved_owner != me) __atomic_store_n(&print_lock, 0, __ATOMIC_RELEASE);
  irq_restore(flags);
}

void report_fail_vec(struct cpu* c, const char* check, u32 vector, u32 expected, u32 got, u32 eip) {
  inc(&c->fails);
  if (c->fails > MAX_FAILS_PRINTED) return;
  if (vector != NOPEND) {
    print_line("FAIL cpu=%u check=%s vector=0x%x expected=0x%x got=0x%x eip=0x%x uptime_ms=%u",
               c->index, check, vector, expected, got, eip, uptime_ms());
  } else {
    print_line("FAIL cpu=%u check=%s expected=0x%x got=0x%x eip=0x%x uptime_ms=%u", c->index, check,
               expected, got, eip, uptime_ms());
  }
}

void report_fail(struct cpu* c, const char* check, u32 expected, u32 got, u32 eip) {
  report_fail_vec(c, check, NOPEND, expected, got, eip);
}

/* ------------------------------------------------------------------ time */
u32 uptime_ms(void) { return div64_32(rdtsc() - tsc_boot, tsc_khz); }

void delay_us(u32 us) {
  u64 end = rdtsc() + (u64)(tsc_khz / 1000 + 1) * us;
  while (rdtsc() < end) cpu_pause();
}

/* PIT channel 2 (gate and OUT through port 0x61), mode 0, 50 ms: TSC and APIC timer rates. */
static void calibrate(void) {
  const u32 ms = 50;
  const u32 count = 1193182u * ms / 1000;
  apic_write(APIC_TDCR, 0x3); /* divide by 16 */
  apic_write(APIC_LVT_TIMER, 0x10000 | VEC_TIMER);
  apic_write(APIC_TICR, 0xFFFFFFFFu);
  outb(0x61, (u8)((inb(0x61) & 0xFC) | 0x01));
  outb(0x43, 0xB0);
  outb(0x42, (u8)(count & 0xFF));
  outb(0x42, (u8)(count >> 8));
  u64 t0 = rdtsc();
  u32 a0 = apic_read(APIC_TCCR);
  u32 spins = 0;
  while (!(inb(0x61) & 0x20)) {
    if (++spins > 200000000u) break;
  }
  u64 t1 = rdtsc();
  u32 a1 = apic_read(APIC_TCCR);
  apic_write(APIC_TICR, 0);
  if (spins > 200000000u || t1 <= t0 || a0 <= a1) {
    print_line("FAIL cpu=0 check=calibration expected=0x1 got=0x0 eip=0x0");
    return;
  }
  tsc_khz = div64_32(t1 - t0, ms);
  apic_ticks_per_ms = (a0 - a1) / ms;
  if (tsc_khz == 0) tsc_khz = 1;
  if (apic_ticks_per_ms == 0) apic_ticks_per_ms = 1;
}

/* ------------------------------------------------------------------ CPUs */
static u64 seg_desc(u32 base, u32 limit, u32 access, u32 flags) {
  return (u64)(limit & 0xFFFF) | ((u64)(base & 0xFFFFFF) << 16) | ((u64)access << 40) |
         ((u64)((limit >> 16) & 0xF) << 48) | ((u64)flags << 52) | ((u64)(base >> 24) << 56);
}

static u32 read_cr3(void) {
  u32 v;
  __asm__ volatile("mov %%cr3, %0" : "=r"(v));
  return v;
}

static void idt_init(void) {
  for (u32 v = 0; v < 256; v++) {
    u32 off = (u32)isr_stubs + 16 * v;
    idt[v] = (u64)(off & 0xFFFF) | ((u64)0x08 << 16) | ((u64)0x8E << 40) | ((u64)(off >> 16) << 48);
  }
  /* #DF: task gate to the DF TSS (selector 0x50), as Windows does. */
  idt[8] = ((u64)0x50 << 16) | ((u64)0x85 << 40);
}

/* GDT (Windows XP selectors): 08 code, 10 data, 18/20 ring-3 code/data, 28 TSS, 30 KPCR,
 * 38 TEB-like, 50 double-fault TSS. KPCR fields: +00 ExceptionList, +1C SelfPcr, +20 Prcb,
 * +38 IDT, +3C GDT, +40 TSS, +44/+46 versions, +48 SetMember, +51 Number; PRCB at +120. */
static void cpu_setup(u32 i) {
  u8* kp = kpcr_pages[i];
  struct cpu* c = &cpus[i];
  c->index = i;
  c->kpcr = kp;
  c->pending = NOPEND;
  u64* g = gdts[i];
  g[0] = 0;
  g[1] = seg_desc(0, 0xFFFFF, 0x9A, 0xC);
  g[2] = seg_desc(0, 0xFFFFF, 0x92, 0xC);
  g[3] = seg_desc(0, 0xFFFFF, 0xFA, 0xC);
  g[4] = seg_desc(0, 0xFFFFF, 0xF2, 0xC);
  g[5] = seg_desc((u32)&tss_main[i], sizeof(struct tss) - 1, 0x89, 0x0);
  g[6] = seg_desc((u32)kp, 0xFFF, 0x92, 0x4);
  g[7] = seg_desc(0, 0xFFF, 0xF2, 0x4);
  g[10] = seg_desc((u32)&tss_df[i], sizeof(struct tss) - 1, 0x89, 0x0);

  struct tss* t = &tss_main[i];
  t->ss0 = 0x10;
  t->esp0 = (u32)cpu_stacks[i] + STACK_SIZE;
  t->iomap = sizeof(struct tss);
  struct tss* d = &tss_df[i];
  d->cr3 = read_cr3();
  d->eip = (u32)df_task_entry;
  d->eflags = 0x2;
  d->esp = (u32)df_stacks[i] + sizeof(df_stacks[i]);
  d->ss0 = 0x10;
  d->esp0 = d->esp;
  d->cs = 0x08;
  d->ds = d->es = d->ss = 0x10;
  d->fs = 0x30;
  d->iomap = sizeof(struct tss);

  memset(kp, 0, 4096);
  *(u32*)(kp + 0x00) = 0xFFFFFFFFu;
  *(u32*)(kp + 0x1C) = (u32)kp;
  *(u32*)(kp + 0x20) = (u32)kp + 0x120;
  *(u32*)(kp + 0x38) = (u32)idt;
  *(u32*)(kp + 0x3C) = (u32)g;
  *(u32*)(kp + 0x40) = (u32)t;
  *(u16*)(kp + 0x44) = 1;
  *(u16*)(kp + 0x46) = 1;
  *(u32*)(kp + 0x48) = 1u << i;
  kp[0x51] = (u8)i;
  u8* prcb = kp + 0x120;
  *(u16*)(prcb + 0x00) = 1;
  *(u16*)(prcb + 0x02) = 1;
  *(u32*)(prcb + 0x04) = (u32)kp + 0xE00; /* a dummy "current thread" */
  prcb[0x10] = (u8)i;
  *(u32*)(prcb + 0x14) = 1u << i;

  struct dtr gdtr = {sizeof(gdts[i]) - 1, (u32)g};
  cpu_load_segments(&gdtr);
  struct dtr idtr = {sizeof(idt) - 1, (u32)idt};
  __asm__ volatile("lidt %0" ::"m"(idtr));
}

static void apic_basic_init(struct cpu* c) {
  c->apic_id = apic_read(APIC_ID) >> 24;
  apic_to_cpu[c->apic_id & 0xFF] = (u8)c->index;
  apic_write(APIC_SVR, 0x100 | VEC_SPURIOUS);
  apic_write(APIC_LVT_LINT0, 0x10000);
  apic_write(APIC_LVT_LINT1, 0x10000);
  apic_write(APIC_LVT_ERROR, 0x10000 | 0xFE);
  apic_write(APIC_LVT_PERF, 0x10000 | 0xFE);
  apic_write(APIC_LVT_THERMAL, 0x10000 | 0xFE);
  apic_write(APIC_LVT_TIMER, 0x10000 | VEC_TIMER);
}

void apic_timer_start(u32 hz) {
  apic_write(APIC_TDCR, 0x3);
  apic_write(APIC_LVT_TIMER, 0x20000 | VEC_TIMER); /* periodic */
  u32 init = apic_ticks_per_ms * 1000 / hz;
  apic_write(APIC_TICR, init ? init : 1);
}

void send_ipi(u32 apic_id, u32 icr_lo) {
  u32 flags = irq_save();
  for (u32 i = 0; i < 100000 && (apic_read(APIC_ICR_LO) & 0x1000); i++) cpu_pause();
  apic_write(APIC_ICR_HI, apic_id << 24);
  apic_write(APIC_ICR_LO, icr_lo);
  irq_restore(flags);
}

static u8 cmos_read(u8 reg) {
  outb(0x70, reg);
  return inb(0x71);
}

static void start_aps(void) {
  memcpy((void*)(KERNEL_OFFSET + TRAMP_PHYS), ap_tramp_start, (u32)(ap_tramp_end - ap_tramp_start));
  u8* tr = (u8*)(KERNEL_OFFSET + TRAMP_PHYS);
  for (u32 i = 1; i < expected_cpus && i < MAX_CPUS; i++) {
    *(u32*)(tr + (tr_cr3 - ap_tramp_start)) = read_cr3();
    *(u32*)(tr + (tr_stack - ap_tramp_start)) = (u32)cpu_stacks[i] + STACK_SIZE;
    *(u32*)(tr + (tr_entry - ap_tramp_start)) = (u32)ap_entry;
    ap_index = i;
    ap_alive = 0;
    u32 apic_id = i;           /* QEMU numbers the APICs 0..n-1 */
    send_ipi(apic_id, 0x4500); /* INIT, assert */
    delay_us(10000);
    send_ipi(apic_id, 0x4600 | (TRAMP_PHYS >> 12)); /* SIPI */
    delay_us(200);
    if (!ap_alive) send_ipi(apic_id, 0x4600 | (TRAMP_PHYS >> 12));
    u64 end = rdtsc() + (u64)tsc_khz * 5000;
    while (!ap_alive && rdtsc() < end) cpu_pause();
    if (!ap_alive) {
      print_line("FAIL cpu=0 check=ap_start expected=0x%x got=0x0 eip=0x0", i);
      break;
    }
    online_cpus++;
  }
}

static int word_is(const char* w, u32 len, const char* prefix, u32 n) {
  if (len < n) return 0;
  for (u32 k = 0; k < n; k++) {
    if (w[k] != prefix[k]) return 0;
  }
  return 1;
}

const char* inject_name(void) {
  static const char* const names[] = {"none", "stale", "book", "fault", "df", "decoy"};
  return inject_mode < 6 ? names[inject_mode] : "?";
}

static void parse_cmdline(void) {
  if (!(*(u32*)(KERNEL_OFFSET + boot_mbi) & 4)) return;
  const char* src = (const char*)(KERNEL_OFFSET + *(u32*)(KERNEL_OFFSET + boot_mbi + 16));
  u32 n = 0;
  while (src[n] && n < sizeof(cmdline) - 1) {
    cmdline[n] = src[n];
    n++;
  }
  cmdline[n] = 0;
  for (const char* p = cmdline; *p;) {
    while (*p == ' ') p++;
    const char* w = p;
    while (*p && *p != ' ') p++;
    u32 len = (u32)(p - w);
    if (word_is(w, len, "seed=", 5) && len > 5) {
      u32 v = 0;
      for (u32 k = 5; k < len && w[k] >= '0' && w[k] <= '9'; k++) v = v * 10 + (u32)(w[k] - '0');
      seed = v;
    } else if (word_is(w, len, "idle=heavy", 10) && len == 10) {
      idle_heavy = 1;
    } else if (word_is(w, len, "regrel=off", 10) && len == 10) {
      regrel_off = 1; /* no register-relative TPR access runs: nothing tprd cannot patch writes */
    } else if (word_is(w, len, "inject=stale", 12) && len == 12) {
      inject_mode = 1; /* a TPR write behind the HAL's back */
    } else if (word_is(w, len, "inject=book", 11) && len == 11) {
      inject_mode = 2; /* corrupted bookkeeping */
    } else if (word_is(w, len, "inject=fault", 12) && len == 12) {
      inject_mode = 3; /* stray execution into the int3 filler: #BP */
    } else if (word_is(w, len, "inject=df", 9) && len == 9) {
      inject_mode = 4; /* an exception on an unmapped stack: #DF through the task gate */
    } else if (word_is(w, len, "inject=decoy", 12) && len == 12) {
      inject_mode = 5; /* a byte of the decoy page changed, as a wrong patch or int3 would */
    }
  }
}

void kernel_main(void) {
  tsc_boot = rdtsc();
  idt_init();
  cpu_setup(0);
  serial_init();
  parse_cmdline();
  print_line("CMDLINE %s", cmdline);
  outb(0x21, 0xFF); /* 8259s masked: only the local APIC interrupts */
  outb(0xA1, 0xFF);
  apic_basic_init(&cpus[0]);
  calibrate();
  expected_cpus = (u32)cmos_read(0x5F) + 1;
  hal_layout_init(); /* copies the HAL-shaped functions; no TPR access before this */
  hal_cpu_init(&cpus[0]);
  start_aps();
  print_line(
      "BOOT guest=hal cpus=%u expected=%u seed=%u inject=%s idle=%s tsc_khz=%u "
      "apic_ticks_per_ms=%u "
      "timer_hz=%u kernel=0x%x-0x%x kpcr0=0x%x tpr_va=0x%x apic_va=0x%x legacy_va=0x%x "
      "ram_mapped=0x%x code=0x%x-0x%x",
      online_cpus, expected_cpus, seed, inject_name(), idle_heavy ? "heavy" : "light", tsc_khz,
      apic_ticks_per_ms, hal_timer_hz(), (u32)kernel_start, (u32)kernel_end, (u32)cpus[0].kpcr,
      TPR_VA, APIC_VA, LEGACY_VA, boot_ram_mapped, hal_code_start(), hal_code_end());
  hal_print_boot_info();
  go = 1;
  cpu_run(&cpus[0]);
}

void ap_main(void) {
  u32 i = ap_index;
  cpu_setup(i);
  apic_basic_init(&cpus[i]);
  hal_cpu_init(&cpus[i]);
  ap_alive = 1;
  while (!go) cpu_pause();
  cpu_run(&cpus[i]);
}

/* ------------------------------------------------------------------ traps */
static u32 read_cr2(void) {
  u32 v;
  __asm__ volatile("mov %%cr2, %0" : "=r"(v));
  return v;
}

void isr_dispatch(struct frame* f) {
  if (f->vector >= 32) {
    interrupt_entry(this_cpu(), f);
    return;
  }
  /* A CPU exception: report and stop this CPU (FS may be unusable, so find the CPU by its
   * APIC ID). */
  u32 i = apic_to_cpu[(apic_read(APIC_ID) >> 24) & 0xFF];
  struct cpu* c = &cpus[i];
  if (!c->in_exception++) {
    print_line("FAIL cpu=%u check=exception vector=%u eip=0x%x error=0x%x cr2=0x%x", i, f->vector,
               f->eip, f->error, read_cr2());
  }
  halt_forever();
}

void df_main(void) {
  u32 i = apic_to_cpu[(apic_read(APIC_ID) >> 24) & 0xFF];
  print_line("FAIL cpu=%u check=exception vector=8 eip=0x%x esp=0x%x", i, tss_main[i].eip,
             tss_main[i].esp);
  halt_forever();
}
