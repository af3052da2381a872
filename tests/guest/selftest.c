/* Handler self-test mode (cmdline `selftest`): installs the tprd blob given as a multiboot
 * module (instantiated by tpr-blob-tool for SELFTEST_BLOB_VA/PA) the way the daemon would,
 * then checks every handler under each strategy: values, preserved registers and EFLAGS,
 * stack balance (tpr_sites.S thunks), interrupt masking, and the mmio guard. */
#include "blob_layout.h"
#include "kernel.h"

#define SELFTEST_BLOB_PA 0xE8000
#define SELFTEST_BLOB_VA (KERNEL_OFFSET + SELFTEST_BLOB_PA)

extern uint32_t selftest_target;
void st_set_tpr(uint32_t value, uint32_t flags);
void st_set_tpr_eax(uint32_t value, uint32_t flags);
uint32_t st_get_tpr_eax(uint32_t), st_get_tpr_ecx(uint32_t), st_get_tpr_edx(uint32_t),
    st_get_tpr_ebx(uint32_t), st_get_tpr_ebp(uint32_t), st_get_tpr_esi(uint32_t),
    st_get_tpr_edi(uint32_t), st_get_tpr_stack(uint32_t);
void st_and_tpr_zero(uint32_t flags); /* 66 90; call: checks the flags the and leaves */

/* Handler table order (engine::HandlerTable): set_tpr, set_tpr_eax, get_tpr[eax ecx edx ebx
 * esp ebp esi edi], get_tpr_stack, and_tpr_zero. */
enum { H_SET = 0, H_SET_EAX = 1, H_GET_EAX = 2, H_GET_ESP = 6, H_GET_STACK = 10, H_AND_ZERO = 11 };
static const struct {
  const char* name;
  uint32_t index;
  uint32_t (*thunk)(uint32_t);
} getters[] = {
    {"get_tpr_eax", 2, st_get_tpr_eax}, {"get_tpr_ecx", 3, st_get_tpr_ecx},
    {"get_tpr_edx", 4, st_get_tpr_edx}, {"get_tpr_ebx", 5, st_get_tpr_ebx},
    {"get_tpr_ebp", 7, st_get_tpr_ebp}, {"get_tpr_esi", 8, st_get_tpr_esi},
    {"get_tpr_edi", 9, st_get_tpr_edi}, {"get_tpr_stack", 10, st_get_tpr_stack},
};
#define GETTER_COUNT (sizeof(getters) / sizeof(getters[0]))
static const uint32_t values[] = {0x00, 0x10, 0x3D, 0x41, 0x51, 0x6E, 0x8F,
                                  0xA2, 0xC1, 0xD7, 0xEF, 0xFF, 0x2B, 0x09};
#define VALUE_COUNT (sizeof(values) / sizeof(values[0]))

static uint8_t* blob;
static uint32_t handlers[TPRD_BLOB_HANDLER_COUNT];
static uint32_t total_pass, total_fail;

static uint32_t hdr(uint32_t offset) { return *(volatile uint32_t*)(blob + offset); }
static volatile uint32_t* strategy_word(void) {
  return (volatile uint32_t*)(blob + TPRD_BLOB_STRATEGY_WORD);
}
static volatile uint8_t* pcpu(uint32_t cpu) {
  return (volatile uint8_t*)(blob + TPRD_BLOB_PERCPU_AREA + cpu * TPRD_BLOB_PCPU_SIZE);
}

static void verdict(const char* strategy, const char* check, int ok, uint32_t expected,
                    uint32_t got) {
  if (ok) {
    ++total_pass;
    kprintf("SELFTEST strategy=%s check=%s pass", strategy, check);
  } else {
    ++total_fail;
    kprintf("SELFTEST strategy=%s check=%s fail expected=0x%x got=0x%x", strategy, check, expected,
            got);
  }
}

static int install_blob(void) {
  if (options.module_size < TPRD_BLOB_TOTAL_SIZE || options.module_phys >= 0x10000000) {
    verdict("none", "blob-module", 0, TPRD_BLOB_TOTAL_SIZE, options.module_size);
    return 0;
  }
  const uint8_t* module = (const uint8_t*)(KERNEL_OFFSET + options.module_phys);
  if (*(const uint32_t*)module != TPRD_BLOB_MAGIC) {
    verdict("none", "blob-magic", 0, TPRD_BLOB_MAGIC, *(const uint32_t*)module);
    return 0;
  }
  uint32_t va = *(const uint32_t*)(module + TPRD_BLOB_HDR_BLOB_VA);
  if (va != SELFTEST_BLOB_VA) {
    verdict("none", "blob-placement", 0, SELFTEST_BLOB_VA, va);
    return 0;
  }
  blob = (uint8_t*)SELFTEST_BLOB_VA;
  memcpy(blob, module, TPRD_BLOB_TOTAL_SIZE);
  /* Read back: the placement must be RAM, not ROM. */
  int same = 1;
  for (uint32_t i = 0; i < TPRD_BLOB_TOTAL_SIZE; ++i) same &= blob[i] == module[i];
  verdict("none", "blob-installed", same && hdr(TPRD_BLOB_HDR_TPR_VA) == TPR_VA, 1, same);
  if (!same) return 0;
  for (uint32_t i = 0; i < TPRD_BLOB_HANDLER_COUNT; ++i) {
    handlers[i] = hdr(TPRD_BLOB_HDR_HANDLERS + 4 * i);
  }
  return 1;
}

static uint32_t flags_for(uint32_t i) {
  uint32_t base = (read_eflags() & 0x200) | 0x2;
  return (i & 1) ? (base | 0x8D5) : base;
}

/* What the real TPR holds after a handler write under `strategy`. */
static uint32_t real_after_write(uint32_t strategy, uint32_t value) {
  return strategy == TPRD_BLOB_STRATEGY_CR8 ? (value & 0xF0) : value;
}

static void write_via(uint32_t handler, uint32_t value, uint32_t flags) {
  selftest_target = handlers[handler];
  if (handler == H_SET) {
    st_set_tpr(value, flags);
  } else {
    st_set_tpr_eax(value, flags);
  }
}

static void check_values(const char* name, uint32_t strategy) {
  uint32_t bad = 0, bad_real = 0, expected = 0, got = 0, clobbers = fs_scratch_clobber();
  for (uint32_t i = 0; i < VALUE_COUNT; ++i) {
    uint32_t v = values[i], flags = flags_for(i);
    write_via(i & 1 ? H_SET : H_SET_EAX, v, flags);
    uint32_t real = apic_read(0x80) & 0xFF;
    if (real != real_after_write(strategy, v)) ++bad_real, expected = v, got = real;
    for (uint32_t g = 0; g < GETTER_COUNT; ++g) {
      selftest_target = handlers[getters[g].index];
      uint32_t r = getters[g].thunk(flags_for(i + g));
      if (r != v) {
        ++bad;
        expected = v;
        got = r;
        kprintf("SELFTEST strategy=%s detail=%s expected=0x%x got=0x%x", name, getters[g].name, v,
                r);
      }
    }
  }
  verdict(name, "values", bad == 0, expected, got);
  verdict(name, "real-tpr", bad_real == 0, expected, got);
  uint32_t clobbered = fs_scratch_clobber() - clobbers;
  verdict(name, "registers-flags-stack", clobbered == 0, 0, clobbered);
}

/* and dword [tpr], 0 through and_tpr_zero: from each nonzero value the TPR reads back 0 through
 * every getter, the real TPR and the shadow are 0, and the thunk sees the flags an `and` with a
 * zero result leaves (ZF PF set, CF OF SF AF clear, IF DF kept), every register and ESP kept. */
static void check_and_zero(const char* name) {
  uint32_t bad = 0, bad_real = 0, got = 0, clobbers = fs_scratch_clobber();
  for (uint32_t i = 0; i < VALUE_COUNT; ++i) {
    uint32_t v = values[i] | 0x01;
    write_via(i & 1 ? H_SET : H_SET_EAX, v, flags_for(i));
    selftest_target = handlers[H_AND_ZERO];
    st_and_tpr_zero(flags_for(i + 1));
    uint32_t real = apic_read(0x80) & 0xFF;
    uint32_t shadow = pcpu(0)[TPRD_BLOB_PCPU_SHADOW];
    if (real != 0 || shadow != 0) ++bad_real, got = real | shadow << 8;
    for (uint32_t g = 0; g < GETTER_COUNT; ++g) {
      selftest_target = handlers[getters[g].index];
      uint32_t r = getters[g].thunk(flags_for(i + g));
      if (r != 0) ++bad, got = r;
    }
  }
  verdict(name, "and-zero-values", bad == 0, 0, got);
  verdict(name, "and-zero-real-tpr-and-shadow", bad_real == 0, 0, got);
  uint32_t clobbered = fs_scratch_clobber() - clobbers;
  verdict(name, "and-zero-registers-flags-stack", clobbered == 0, 0, clobbered);
}

static uint32_t irr_bit(uint32_t vector) {
  return (apic_read(0x200 + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

static void check_masking(const char* name) {
  static const uint32_t vectors[] = {0x41, 0x63, 0x92, 0xB4, 0xD1};
  uint32_t bad = 0, got = 0;
  __asm__ volatile("sti");
  for (uint32_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); ++i) {
    uint32_t vector = vectors[i], cls = vector >> 4;
    uint32_t before = cpus[0].irq_count[vector];
    write_via(H_SET, (cls << 4) | 0x7, flags_for(i));
    apic_write(0x310, 0);
    apic_write(0x300, 0x00040000 | vector);
    uint32_t pending = 0;
    for (uint32_t polls = 0; polls < 100000 && !pending; ++polls) pending = irr_bit(vector);
    if (!pending || cpus[0].irq_count[vector] != before) ++bad, got = vector;
    write_via(H_SET_EAX, ((cls - 1) << 4) | 0x7, flags_for(i));
    uint64_t deadline = rdtsc() + ms_to_tsc(50);
    while (cpus[0].irq_count[vector] == before && rdtsc() < deadline) __asm__ volatile("pause");
    for (uint32_t spins = 0; spins < 200; ++spins) __asm__ volatile("pause");
    if (cpus[0].irq_count[vector] - before != 1 || irr_bit(vector)) ++bad, got = vector;
  }
  verdict(name, "masking", bad == 0, 0, got);
}

/* mmio guard: a TPR write behind the handlers' back must be seen within guard_period reads,
 * fixed in the shadow, counted, and must flip the strategy word to exact. */
static void check_guard(void) {
  uint32_t period = hdr(TPRD_BLOB_HDR_GUARD_PERIOD);
  write_via(H_SET, 0x41, flags_for(0));
  volatile uint8_t* entry = pcpu(0);
  uint32_t mismatches = *(volatile uint32_t*)(entry + TPRD_BLOB_PCPU_MISMATCHES);
  apic_write(0x80, 0x62); /* behind the handlers' back */
  uint32_t reads = 0, seen = 0;
  selftest_target = handlers[H_GET_EAX];
  while (reads <= period + 1 && !seen) {
    ++reads;
    seen = st_get_tpr_eax(flags_for(reads)) == 0x62;
  }
  verdict("mmio", "guard-detects", seen && reads <= period + 1, period, reads);
  verdict("mmio", "guard-flips-to-exact", *strategy_word() == TPRD_BLOB_STRATEGY_EXACT,
          TPRD_BLOB_STRATEGY_EXACT, *strategy_word());
  uint32_t now = *(volatile uint32_t*)(entry + TPRD_BLOB_PCPU_MISMATCHES);
  verdict("mmio", "guard-counts", now == mismatches + 1, mismatches + 1, now);
  verdict("mmio", "guard-fixes-shadow", entry[TPRD_BLOB_PCPU_SHADOW] == 0x62, 0x62,
          entry[TPRD_BLOB_PCPU_SHADOW]);
}

static int cpu_has_cr8legacy(void) {
  uint32_t a = 0x80000000, b, c = 0, d;
  __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
  if (a < 0x80000001) return 0;
  a = 0x80000001;
  c = 0;
  __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
  return (c >> 4) & 1;
}

void selftest_run(void) {
  if (!install_blob()) {
    kprintf("SELFTEST done pass=%u fail=%u", total_pass, total_fail);
    return;
  }
  static const struct {
    const char* name;
    uint32_t word;
  } strategies[] = {{"exact", TPRD_BLOB_STRATEGY_EXACT},
                    {"mmio", TPRD_BLOB_STRATEGY_MMIO},
                    {"cr8", TPRD_BLOB_STRATEGY_CR8}};
  volatile uint8_t* entry = pcpu(0);
  for (uint32_t s = 0; s < 3; ++s) {
    const char* name = strategies[s].name;
    if (strategies[s].word == TPRD_BLOB_STRATEGY_CR8 && !cpu_has_cr8legacy()) {
      verdict(name, "cpu-has-cr8legacy", 0, 1, 0);
      continue;
    }
    /* As the daemon does: shadow from the real TPR, enable the CPU, then the strategy. */
    entry[TPRD_BLOB_PCPU_SHADOW] = (uint8_t)apic_read(0x80);
    entry[TPRD_BLOB_PCPU_ENABLED] = 1;
    *strategy_word() = strategies[s].word;
    check_values(name, strategies[s].word);
    check_and_zero(name);
    check_masking(name);
    if (strategies[s].word == TPRD_BLOB_STRATEGY_MMIO) {
      uint32_t word = *strategy_word();
      verdict(name, "no-false-guard-flip", word == TPRD_BLOB_STRATEGY_MMIO, TPRD_BLOB_STRATEGY_MMIO,
              word);
      check_guard();
    }
  }
  /* A CPU whose entry is disabled takes the exact path whatever the strategy word says. */
  *strategy_word() = TPRD_BLOB_STRATEGY_CR8;
  entry[TPRD_BLOB_PCPU_ENABLED] = 0;
  write_via(H_SET, 0x5B, flags_for(1));
  uint32_t real = apic_read(0x80) & 0xFF;
  verdict("cr8", "disabled-cpu-exact-path", real == 0x5B, 0x5B, real);
  selftest_target = handlers[H_AND_ZERO];
  st_and_tpr_zero(flags_for(1));
  real = apic_read(0x80) & 0xFF;
  verdict("cr8", "disabled-cpu-and-zero-exact-path", real == 0, 0, real);
  *strategy_word() = TPRD_BLOB_STRATEGY_EXACT;
  write_via(H_SET, 0, flags_for(0));
  kprintf("SELFTEST done pass=%u fail=%u", total_pass, total_fail);
}
