/* The guest's continuous self-checks (every CPU), the benchmark (boot CPU) and the periodic
 * STAT/BENCH/LATE lines. */
#include "kernel.h"

uint32_t tpr_read_a1_eax(uint32_t), tpr_read_8b_eax(uint32_t), tpr_read_8b_ecx(uint32_t),
    tpr_read_8b_edx(uint32_t), tpr_read_8b_ebx(uint32_t), tpr_read_8b_ebp(uint32_t),
    tpr_read_8b_esi(uint32_t), tpr_read_8b_edi(uint32_t), tpr_read_ff6_push(uint32_t);
void tpr_write_a3_eax(uint32_t, uint32_t), tpr_write_89_eax(uint32_t, uint32_t),
    tpr_write_89_ecx(uint32_t, uint32_t), tpr_write_89_edx(uint32_t, uint32_t),
    tpr_write_89_ebx(uint32_t, uint32_t), tpr_write_89_ebp(uint32_t, uint32_t),
    tpr_write_89_esi(uint32_t, uint32_t), tpr_write_89_edi(uint32_t, uint32_t);
void tpr_write_c7_00(uint32_t), tpr_write_c7_3d(uint32_t), tpr_write_c7_41(uint32_t),
    tpr_write_c7_51(uint32_t), tpr_write_c7_c1(uint32_t), tpr_write_c7_ff(uint32_t);
void tpr_write_and_zero(uint32_t flags); /* and dword [tpr], 0 */

const struct tpr_reader tpr_readers[] = {
    {"rd_a1_eax", tpr_read_a1_eax},     {"rd_8b_eax", tpr_read_8b_eax},
    {"rd_8b_ecx", tpr_read_8b_ecx},     {"rd_8b_edx", tpr_read_8b_edx},
    {"rd_8b_ebx", tpr_read_8b_ebx},     {"rd_8b_ebp", tpr_read_8b_ebp},
    {"rd_8b_esi", tpr_read_8b_esi},     {"rd_8b_edi", tpr_read_8b_edi},
    {"rd_ff6_push", tpr_read_ff6_push},
};
const uint32_t tpr_reader_count = sizeof(tpr_readers) / sizeof(tpr_readers[0]);

const struct tpr_writer tpr_writers[] = {
    {"wr_a3_eax", tpr_write_a3_eax}, {"wr_89_eax", tpr_write_89_eax},
    {"wr_89_ecx", tpr_write_89_ecx}, {"wr_89_edx", tpr_write_89_edx},
    {"wr_89_ebx", tpr_write_89_ebx}, {"wr_89_ebp", tpr_write_89_ebp},
    {"wr_89_esi", tpr_write_89_esi}, {"wr_89_edi", tpr_write_89_edi},
};
const uint32_t tpr_writer_count = sizeof(tpr_writers) / sizeof(tpr_writers[0]);

const struct tpr_imm_writer tpr_imm_writers[] = {
    {"wr_c7_00", tpr_write_c7_00, 0x00}, {"wr_c7_3d", tpr_write_c7_3d, 0x3D},
    {"wr_c7_41", tpr_write_c7_41, 0x41}, {"wr_c7_51", tpr_write_c7_51, 0x51},
    {"wr_c7_c1", tpr_write_c7_c1, 0xC1}, {"wr_c7_ff", tpr_write_c7_ff, 0xFF},
};
const uint32_t tpr_imm_writer_count = sizeof(tpr_imm_writers) / sizeof(tpr_imm_writers[0]);

/* Full 8-bit values: the low nibble matters (a CR8 write would lose it). */
static const uint32_t test_values[] = {0x00, 0x3D, 0x41, 0x51, 0x6E, 0x8F, 0xA2,
                                       0xC1, 0xD7, 0xFF, 0x1C, 0x2B, 0xE9};
#define VALUE_COUNT (sizeof(test_values) / sizeof(test_values[0]))
static const uint32_t mask_vectors[] = {0x41, 0x63, 0x92, 0xB4, 0xD1};
#define MAX_FAIL_LINES 50

static void report(struct cpu_state* st, uint32_t cpu, int ok, const char* check,
                   const char* detail, uint32_t expected, uint32_t got) {
  if (ok) {
    ++st->pass;
    return;
  }
  ++st->fail;
  if (st->fail_lines++ < MAX_FAIL_LINES) {
    kprintf("FAIL cpu=%u check=%s%s expected=0x%x got=0x%x round=%u", cpu, check, detail, expected,
            got, st->rounds);
  }
}

/* Arithmetic flags alternate between all set and all clear; IF stays as it is. */
static uint32_t flags_pattern(uint32_t round) {
  uint32_t base = (read_eflags() & 0x200) | 0x2;
  return (round & 1) ? (base | 0x8D5) : base;
}

static void check_regs(struct cpu_state* st, uint32_t cpu, uint32_t* clobbers, const char* name) {
  uint32_t now = fs_scratch_clobber();
  report(st, cpu, now == *clobbers, "regs:", name, 0, now - *clobbers);
  *clobbers = now;
}

static uint32_t irr_bit(uint32_t vector) {
  return (apic_read(0x200 + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}
static uint32_t isr_bit(uint32_t vector) {
  return (apic_read(0x100 + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

/* With the TPR at the vector's class, a self-IPI must stay pending in IRR; once the TPR is
 * lowered below the class it must be delivered exactly once. */
static void check_masking(struct cpu_state* st, uint32_t cpu, uint32_t round, uint32_t flags) {
  uint32_t vector = mask_vectors[round % (sizeof(mask_vectors) / sizeof(mask_vectors[0]))];
  uint32_t cls = vector >> 4, nibble = (round * 5) & 0xF;
  const struct tpr_writer* raise = &tpr_writers[round % tpr_writer_count];
  const struct tpr_writer* lower = &tpr_writers[(round + 3) % tpr_writer_count];
  uint32_t before = cpus[cpu].irq_count[vector];
  __asm__ volatile("sti");
  raise->fn((cls << 4) | nibble, flags);
  apic_write(0x310, 0);
  apic_write(0x300, 0x00040000 | vector); /* fixed, to self */
  uint32_t pending = 0;
  for (uint32_t polls = 0; polls < 100000 && !pending; ++polls) pending = irr_bit(vector);
  for (uint32_t spins = 0; spins < 200; ++spins) __asm__ volatile("pause");
  uint32_t delivered_early = cpus[cpu].irq_count[vector] - before;
  report(st, cpu, pending, "mask-pending:", raise->name, 1, pending);
  report(st, cpu, delivered_early == 0, "mask-held:", raise->name, 0, delivered_early);
  lower->fn(((cls - 1) << 4) | nibble, flags);
  uint64_t deadline = rdtsc() + ms_to_tsc(50);
  while (cpus[cpu].irq_count[vector] == before && rdtsc() < deadline) __asm__ volatile("pause");
  for (uint32_t spins = 0; spins < 200; ++spins) __asm__ volatile("pause");
  uint32_t delivered = cpus[cpu].irq_count[vector] - before;
  report(st, cpu, delivered == 1, "mask-delivered-once:", lower->name, 1, delivered);
  uint32_t left = irr_bit(vector) | (isr_bit(vector) << 1);
  report(st, cpu, left == 0, "mask-irr-isr-clear:", lower->name, 0, left);
}

static void check_round(struct cpu_state* st, uint32_t cpu, uint32_t round) {
  uint32_t flags = flags_pattern(round);
  uint32_t clobbers = fs_scratch_clobber();
  uint32_t value = 0;
  for (uint32_t i = 0; i < tpr_writer_count; ++i) {
    const struct tpr_writer* w = &tpr_writers[i];
    const struct tpr_reader* r = &tpr_readers[(round + i) % tpr_reader_count];
    value = test_values[(round * 7 + i) % VALUE_COUNT];
    w->fn(value, flags);
    check_regs(st, cpu, &clobbers, w->name);
    uint32_t got = r->fn(flags);
    check_regs(st, cpu, &clobbers, r->name);
    report(st, cpu, got == value, "rw:", w->name, value, got);
  }
  for (uint32_t i = 0; i < tpr_reader_count; ++i) {
    uint32_t got = tpr_readers[i].fn(flags);
    check_regs(st, cpu, &clobbers, tpr_readers[i].name);
    report(st, cpu, got == value, "read:", tpr_readers[i].name, value, got);
  }
  for (uint32_t i = 0; i < tpr_imm_writer_count; ++i) {
    const struct tpr_imm_writer* w = &tpr_imm_writers[(round + i) % tpr_imm_writer_count];
    const struct tpr_reader* r = &tpr_readers[(round + 2 * i) % tpr_reader_count];
    w->fn(flags);
    check_regs(st, cpu, &clobbers, w->name);
    uint32_t got = r->fn(flags);
    check_regs(st, cpu, &clobbers, r->name);
    report(st, cpu, got == w->value, "imm:", w->name, w->value, got);
  }
  /* and dword [tpr], 0 from a nonzero TPR: it must read back 0 (its wrapper checks the flags
   * it leaves: ZF PF set, CF OF SF AF clear). Writer and reader rotate. */
  {
    const struct tpr_writer* w = &tpr_writers[(round + 5) % tpr_writer_count];
    const struct tpr_reader* r = &tpr_readers[(round + 4) % tpr_reader_count];
    uint32_t before = test_values[(round * 3 + 1) % VALUE_COUNT] | 0x10;
    w->fn(before, flags);
    check_regs(st, cpu, &clobbers, w->name);
    tpr_write_and_zero(flags);
    check_regs(st, cpu, &clobbers, "wr_and_zero");
    uint32_t got = r->fn(flags);
    check_regs(st, cpu, &clobbers, r->name);
    report(st, cpu, got == 0, "and0:", "wr_and_zero", 0, got);
  }
  /* HAL-shaped functions, as Windows calls them. */
  uint32_t current = tpr_read_a1_eax(flags);
  uint32_t raised = test_values[(round + 3) % VALUE_COUNT];
  uint32_t old = KfRaiseIrql_tprg(raised);
  report(st, cpu, old == current, "hal-raise:", "old", current, old);
  uint32_t now = KeGetCurrentIrql_tprg();
  report(st, cpu, now == raised, "hal-get-current:", "", raised, now);
  KfLowerIrql_tprg(current);
  now = tpr_read_8b_esi(flags);
  report(st, cpu, now == current, "hal-lower:", "", current, now);
  check_regs(st, cpu, &clobbers, "hal");

  check_masking(st, cpu, round, flags);
  check_regs(st, cpu, &clobbers, "masking");

  if ((round & 63) == 0) {
    /* Rarely-run forms that tprd must leave alone; they must still see the right TPR. */
    tpr_write_c7_51(flags);
    uint32_t got = unpatchable_regrel_read();
    report(st, cpu, got == 0x51, "unpatchable:", "regrel", 0x51, got);
    got = unpatchable_cmp_imm(0x51);
    report(st, cpu, got == 1, "unpatchable:", "cmp", 1, got);
    got = unpatchable_es_read();
    report(st, cpu, got == 0x51, "unpatchable:", "es-8b", 0x51, got);
    got = unpatchable_ds_read();
    report(st, cpu, got == 0x51, "unpatchable:", "3ea1", 0x51, got);
    if (options.regwrite) {
      unpatchable_regrel_write(0x3D);
      got = tpr_read_8b_edx(flags);
      report(st, cpu, got == 0x3D, "unpatchable:", "regrel-write", 0x3D, got);
    }
    check_regs(st, cpu, &clobbers, "unpatchable");
  }

  if (options.late_enabled && uptime_ms() >= (uint64_t)options.late_seconds * 1000) {
    uint32_t expected = test_values[round % VALUE_COUNT];
    tpr_write_89_ebx(expected, flags);
    uint32_t got = late_site_read(flags);
    if (!st->late_reported) {
      st->late_reported = 1;
      kprintf("LATE cpu=%u uptime_ms=%U", cpu, uptime_ms());
    }
    report(st, cpu, got == expected, "late:", "late_8b_ebx", expected, got);
    check_regs(st, cpu, &clobbers, "late");
  }
  tpr_write_c7_00(flags);
}

/* Cycles per operation, times ten (one decimal place). */
static uint32_t per_op_tenths(uint64_t cycles, uint32_t iterations) {
  return (uint32_t)udiv64(cycles * 10, iterations);
}

/* Each figure is the cheapest of several chunks: on a loaded host a chunk may be preempted. */
#define BENCH_CHUNKS 8
struct bench_result {
  uint64_t best;
  uint32_t iterations;
};

static void bench_take(struct bench_result* r, uint64_t cycles) {
  if (r->best == 0 || cycles < r->best) r->best = cycles;
}

static void print_tenths(uint32_t* out, const struct bench_result* r) {
  *out = per_op_tenths(r->best, r->iterations);
}

static void bench_round(uint32_t round) {
  struct bench_result read = {0, 4000}, write = {0, 4000}, mread = {0, 40000}, mwrite = {0, 40000};
  for (uint32_t chunk = 0; chunk < BENCH_CHUNKS; ++chunk) {
    uint64_t t0 = rdtsc_serialized();
    bench_tpr_read(read.iterations);
    uint64_t t1 = rdtsc_serialized();
    bench_tpr_write(write.iterations, 0);
    uint64_t t2 = rdtsc_serialized();
    bench_mem_read(mread.iterations);
    uint64_t t3 = rdtsc_serialized();
    bench_mem_write(mwrite.iterations, 0);
    uint64_t t4 = rdtsc_serialized();
    bench_take(&read, t1 - t0);
    bench_take(&write, t2 - t1);
    bench_take(&mread, t3 - t2);
    bench_take(&mwrite, t4 - t3);
  }
  uint32_t r, w, mr, mw;
  print_tenths(&r, &read);
  print_tenths(&w, &write);
  print_tenths(&mr, &mread);
  print_tenths(&mw, &mwrite);
  kprintf("BENCH round=%u tpr_read=%u.%u tpr_write=%u.%u mem_read=%u.%u mem_write=%u.%u", round,
          r / 10, r % 10, w / 10, w % 10, mr / 10, mr % 10, mw / 10, mw % 10);
}

/* The decoy table is data that only looks like TPR accesses: nothing may ever change it (under
 * KVM a software breakpoint on it would read as int3). FNV-1a of its bytes. */
extern const uint8_t tprg_decoy_table[], tprg_decoy_table_end[];
static uint32_t decoy_table_sum(void) {
  uint32_t sum = 2166136261u;
  for (const volatile uint8_t* b = tprg_decoy_table; b < tprg_decoy_table_end; ++b) {
    sum = (sum ^ *b) * 16777619u;
  }
  return sum;
}

static uint32_t tsc_to_us(uint64_t ticks) {
  return (uint32_t)udiv64(ticks * 1000, (uint32_t)ms_to_tsc(1));
}

/* `gapwatch`: this CPU does nothing but read its TSC back to back, with interrupts off (its own
 * timer is not a gap to report), and prints once a second the largest step between two reads
 * and the steps over 50 us, and a GAPHIT line for each step of 5 ms or more: the stops the
 * guest can see. Under TCG QEMU freezes the TSC while the VM is stopped, so a host stop shows
 * only as far as the vCPU still ran, or was not yet running, with the ticks on; under KVM the
 * TSC runs on and the whole stop shows. */
NORETURN static void gap_watch(uint32_t cpu) {
  __asm__ volatile("cli");
  const uint64_t over = udiv64(ms_to_tsc(1), 20), big = ms_to_tsc(5), period = ms_to_tsc(1000);
  uint64_t prev = rdtsc(), next = prev + period, largest = 0, over_total = 0;
  uint32_t over_count = 0;
  for (;;) {
    const uint64_t now = rdtsc(), step = now - prev;
    if (step > largest) largest = step;
    if (step >= over) {
      ++over_count;
      over_total += step;
    }
    if (step >= big) {
      /* One line per step of 5 ms or more, when it happened in guest time. */
      kprintf("GAPHIT cpu=%u step_us=%u uptime_ms=%U", cpu, tsc_to_us(step), uptime_ms());
      prev = rdtsc();
      continue;
    }
    prev = now;
    if (now >= next) {
      kprintf("GAP cpu=%u max_us=%u over_50us=%u over_50us_total_us=%u uptime_ms=%U", cpu,
              tsc_to_us(largest), over_count, tsc_to_us(over_total), uptime_ms());
      largest = over_total = 0;
      over_count = 0;
      prev = rdtsc(); /* the print's own time is not a gap */
      next = prev + period;
    }
  }
}

NORETURN void cpu_main(uint32_t cpu) {
  while (!boot_done) __asm__ volatile("pause");
  if (options.gapwatch && cpu != 0 && cpu + 1 == online_cpu_count()) gap_watch(cpu);
  if (cpu == 0 && options.selftest) selftest_run();
  struct cpu_state* st = &cpus[cpu];
  const uint32_t decoy_sum = decoy_table_sum();
  __asm__ volatile("sti");
  uint64_t stat_period = ms_to_tsc(1000), bench_period = ms_to_tsc(2000);
  uint64_t next_stat = rdtsc() + stat_period, next_bench = rdtsc() + ms_to_tsc(300);
  uint32_t bench_rounds = 0;
  for (;;) {
    check_round(st, cpu, st->rounds);
    ++st->rounds;
    uint64_t now = rdtsc();
    if (now >= next_stat) {
      const uint32_t sum = decoy_table_sum();
      report(st, cpu, sum == decoy_sum, "data:", "decoy-table", decoy_sum, sum);
      kprintf("STAT cpu=%u rounds=%u pass=%u fail=%u uptime_ms=%U", cpu, st->rounds, st->pass,
              st->fail, uptime_ms());
      next_stat = now + stat_period;
    }
    if (cpu == 0 && !options.nobench && now >= next_bench) {
      bench_round(bench_rounds++);
      next_bench = rdtsc() + bench_period;
    }
  }
}
