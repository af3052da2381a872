/* hal-guest workload: places copies of the HAL-shaped functions (hal_templates.S) at
 * seed-chosen offsets, then runs rounds of IRQL traffic on every CPU through them and checks,
 * forever: (1) every TPR read returns what this CPU last wrote, (2) no interrupt arrives while
 * the TPR masks its class, (3) a self-IPI sent while masked arrives exactly once after the
 * TPR drops below its class. See docs/hal-guest.md. */
#include "hal_guest.h"

struct tmpl_rec {
  const u8* start;
  const u8* end;
  const char* name;
};
struct site_rec {
  const u8* tmpl;
  u32 off;
  u32 len;
  const char* form;
  const char* tag;
};
struct decoy_rec {
  const u8* addr;
  const char* form;
  const char* name;
};
extern const struct tmpl_rec hal_tmpl_recs_start[], hal_tmpl_recs_end[];
extern const struct site_rec hal_site_recs_start[], hal_site_recs_end[];
extern const struct decoy_rec hal_decoy_recs_start[], hal_decoy_recs_end[];
extern const u8 HalpIRQLtoTPR[32], HalpVectorToIRQL[16];
extern u8 hal_code_area[], hal_code_area_end[];
extern const u8 hal_templates_start[], hal_templates_end[], hal_decoy_page[], hal_decoy_page_end[];

#define I2T(irql) ((u32)HalpIRQLtoTPR[(irql)&31])
#define V2I(tpr) ((u32)HalpVectorToIRQL[((tpr) >> 4) & 15])

typedef u32(__attribute__((fastcall)) * irql_fn)(u32);
typedef u32 (*void_fn)(void);

/* ------------------------------------------------------------------ roles and variants */
enum role_id {
  R_RAISE,
  R_RAISE2,
  R_DPC,
  R_SYNCH,
  R_LOWER,
  R_LOWER2,
  R_GET,
  R_GET2,
  R_READ,
  R_READ2,
  R_ZERO,
  R_RARE_RAISE,
  R_RARE_READ,
  R_RR_READ,
  R_RR_WRITE,
  R_CMP0,
  R_CMP41,
  R_TEST,
  R_ICR,
  R_INJECT,
  R_COUNT
};

struct role_def {
  const char* name;
  const char* kind;
  const char* choices[7];
};

/* Each role is one placed copy of one template; the seed picks the template among choices. */
static const struct role_def role_defs[R_COUNT] = {
    [R_RAISE] = {"KfRaiseIrql", "hot", {"raise_a"}},
    [R_RAISE2] = {"KfRaiseIrql2", "hot", {"raise_a", "raise_b", "raise_c"}},
    [R_DPC] = {"KeRaiseIrqlToDpcLevel", "hot", {"dpc_edx", "dpc_ecx"}},
    [R_SYNCH] = {"KeRaiseIrqlToSynchLevel", "hot", {"synch_edx", "synch_eax"}},
    [R_LOWER] = {"KfLowerIrql",
                 "hot",
                 {"lower_ecx_rb", "lower_ecx", "lower_edx", "lower_esi", "lower_ebx"}},
    [R_LOWER2] = {"KfLowerIrql2",
                  "hot",
                  {"lower_ecx_rb", "lower_ecx", "lower_edx", "lower_eax", "lower_esi",
                   "lower_ebx"}},
    [R_GET] = {"KeGetCurrentIrql", "hot", {"get_ecx"}},
    [R_GET2] = {"KeGetCurrentIrql2", "hot", {"get_eax", "get_ecx", "get_edx", "get_esi"}},
    [R_READ] = {"HalpReadTpr", "hot", {"rd_push"}},
    [R_READ2] = {"HalpReadTpr2", "hot", {"rd_a1", "rd_ecx", "rd_edx", "rd_esi", "rd_push"}},
    [R_ZERO] = {"MoveZeroToTpr", "hot", {"zero_and"}},
    [R_RARE_RAISE] = {"HalpRareRaise", "rare", {"rw_edi", "rw_ebx", "rw_c7_61", "rw_c7_b1"}},
    [R_RARE_READ] = {"HalpRareRead", "rare", {"rd_edi", "rd_ebx", "rd_ebp", "rd_a1", "rd_push"}},
    [R_RR_READ] = {"HalpRegRelRead", "regrel", {"rr_rd"}},
    [R_RR_WRITE] = {"HalpRegRelWrite", "regrel", {"rr_wr"}},
    [R_CMP0] = {"HalpTprIsPassive", "cmp", {"cmp_00"}},
    [R_CMP41] = {"HalpTprIsDispatch", "cmp", {"cmp_41"}},
    [R_TEST] = {"HalpTestTpr", "cmp", {"test_f0"}},
    [R_ICR] = {"HalpSendSelfIpi", "icr", {"icr_abs", "icr_rr"}},
    [R_INJECT] = {"HalpInjectStale", "rare", {"inj_c7"}},
};

struct role {
  const struct tmpl_rec* t;
  u32 va;     /* where the copy lives */
  u32 rd_va;  /* its first TPR read site (for FAIL eip=), else va */
  u32 has_rb; /* KfLowerIrql with a read-back: returns the value read after the write */
  u32 fixed;  /* rare raise with a fixed C7 value: its IRQL, else 0xFF */
  u32 placed;
  char check[40];
};
static struct role roles[R_COUNT];

static struct {
  u32 timer_hz, ipi_ms, ipi_ticks, alt_every, zero_every, mask_every, regrel_every, cmp_every;
  u32 icr_every, rare_ms, pad_max, straddle_role, order[R_COUNT], n_order;
} v;

static u32 code_used;
#define IDLE_EVERY_MS 2

static u32 rng_next(u32* s) {
  u32 x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  *s = x;
  return x;
}

static int str_eq(const char* a, const char* b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

static const struct tmpl_rec* find_tmpl(const char* name) {
  for (const struct tmpl_rec* t = hal_tmpl_recs_start; t < hal_tmpl_recs_end; t++) {
    if (str_eq(t->name, name)) return t;
  }
  print_line("FAIL cpu=0 check=template:%s expected=0x1 got=0x0 eip=0x0", name);
  halt_forever();
}

static u32 pick(u32* s, const u32* list, u32 n) { return list[rng_next(s) % n]; }

u32 hal_timer_hz(void) { return v.timer_hz; }
u32 hal_code_start(void) { return (u32)hal_code_area; }
u32 hal_code_end(void) { return (u32)hal_code_area + code_used; }

void hal_layout_init(void) {
  u32 s = seed * 2654435761u ^ 0x9E3779B9u;
  if (!s) s = 1;
  for (int i = 0; i < 8; i++) rng_next(&s);

  static const u32 hz[] = {1000, 1000, 1500, 2000};
  static const u32 pads[] = {8, 64, 512, 2800};
  v.timer_hz = pick(&s, hz, 4);
  v.ipi_ms = 2 + rng_next(&s) % 5;
  v.ipi_ticks = v.ipi_ms * v.timer_hz / 1000;
  v.alt_every = 2 + rng_next(&s) % 3;
  v.zero_every = 1 + rng_next(&s) % 8;
  v.mask_every = 4 + rng_next(&s) % 29;
  v.regrel_every = 16 + rng_next(&s) % 241;
  if (regrel_off) v.regrel_every = 0; /* drawn all the same: the other rates stay the seed's */
  v.cmp_every = 8 + rng_next(&s) % 121;
  v.icr_every = 16 + rng_next(&s) % 241;
  v.rare_ms = 1 + rng_next(&s) % 50;
  v.pad_max = pick(&s, pads, 4);
  static const u32 straddlers[] = {R_LOWER, R_RAISE, R_DPC};
  v.straddle_role = (seed % 3 == 0) ? pick(&s, straddlers, 3) : R_COUNT;

  /* Forms: one template per role. */
  for (u32 r = 0; r < R_COUNT; r++) {
    u32 n = 0;
    while (n < 7 && role_defs[r].choices[n]) n++;
    roles[r].t = find_tmpl(role_defs[r].choices[rng_next(&s) % n]);
  }

  /* Order: a shuffle of the roles (the injector only with inject=stale). */
  v.n_order = 0;
  for (u32 r = 0; r < R_COUNT; r++) {
    if (r == R_INJECT && inject_mode != 1) continue;
    v.order[v.n_order++] = r;
  }
  for (u32 i = v.n_order - 1; i > 0; i--) {
    u32 j = rng_next(&s) % (i + 1);
    u32 t = v.order[i];
    v.order[i] = v.order[j];
    v.order[j] = t;
  }

  /* Copy, like a loader: int3 filler, seed-chosen padding, one site across a page boundary
   * when straddle is on. Every copy still uses absolute TPR and table addresses. */
  u32 area = (u32)(hal_code_area_end - hal_code_area);
  memset(hal_code_area, 0xCC, area);
  u32 cur = 0;
  for (u32 i = 0; i < v.n_order; i++) {
    u32 r = v.order[i];
    struct role* ro = &roles[r];
    u32 size = (u32)(ro->t->end - ro->t->start);
    cur += rng_next(&s) % (v.pad_max + 1);
    if (r == v.straddle_role) {
      for (const struct site_rec* sr = hal_site_recs_start; sr < hal_site_recs_end; sr++) {
        if (sr->tmpl != ro->t->start || !str_eq(sr->tag, "wr")) continue;
        u32 boundary = (cur + sr->off + sr->len + 4095) & ~4095u;
        u32 k = 1 + rng_next(&s) % (sr->len - 1);
        cur = boundary - sr->off - k;
        break;
      }
    }
    if (cur + size + 16 > area) {
      print_line("FAIL cpu=0 check=layout expected=0x%x got=0x%x eip=0x0", area, cur + size);
      halt_forever();
    }
    memcpy(hal_code_area + cur, ro->t->start, size);
    ro->va = (u32)hal_code_area + cur;
    ro->rd_va = ro->va;
    ro->placed = 1;
    ro->fixed = 0xFF;
    if (str_eq(ro->t->name, "rw_c7_61")) ro->fixed = 5;
    if (str_eq(ro->t->name, "rw_c7_b1")) ro->fixed = 10;
    ro->has_rb = str_eq(ro->t->name, "lower_ecx_rb");
    for (const struct site_rec* sr = hal_site_recs_start; sr < hal_site_recs_end; sr++) {
      if (sr->tmpl == ro->t->start && (str_eq(sr->tag, "rd") || str_eq(sr->tag, "rb"))) {
        ro->rd_va = ro->va + sr->off;
        break;
      }
    }
    const char* n = role_defs[r].name;
    u32 k = 0;
    for (const char* p = "read/"; *p; p++) ro->check[k++] = *p;
    while (*n && k < sizeof(ro->check) - 1) ro->check[k++] = *n++;
    ro->check[k] = 0;
    cur += size;
  }
  code_used = cur;
}

void hal_print_boot_info(void) {
  print_line(
      "VARIANT seed=%u timer_hz=%u ipi_ms=%u alt_every=%u zero_every=%u mask_every=%u "
      "regrel_every=%u cmp_every=%u icr_every=%u rare_ms=%u pad_max=%u straddle=%s",
      seed, v.timer_hz, v.ipi_ms, v.alt_every, v.zero_every, v.mask_every, v.regrel_every,
      v.cmp_every, v.icr_every, v.rare_ms, v.pad_max,
      v.straddle_role < R_COUNT ? role_defs[v.straddle_role].name : "none");
  for (u32 i = 0; i < v.n_order; i++) {
    u32 r = v.order[i];
    print_line("FUNC name=%s va=0x%x size=%u template=%s kind=%s", role_defs[r].name, roles[r].va,
               (u32)(roles[r].t->end - roles[r].t->start), roles[r].t->name, role_defs[r].kind);
  }
  for (u32 i = 0; i < v.n_order; i++) {
    u32 r = v.order[i];
    for (const struct site_rec* sr = hal_site_recs_start; sr < hal_site_recs_end; sr++) {
      if (sr->tmpl != roles[r].t->start) continue;
      u32 va = roles[r].va + sr->off;
      u32 straddle = (va >> 12) != ((va + sr->len - 1) >> 12);
      print_line("SITE name=%s.%s va=0x%x form=%s kind=%s len=%u page_off=0x%x straddle=%u",
                 role_defs[r].name, sr->tag, va, sr->form, role_defs[r].kind, sr->len, va & 0xFFF,
                 straddle);
    }
  }
  for (const struct decoy_rec* d = hal_decoy_recs_start; d < hal_decoy_recs_end; d++) {
    print_line("SITE name=%s va=0x%x form=%s kind=decoy", d->name, (u32)d->addr, d->form);
  }
  print_line("TEMPLATES va=0x%x-0x%x decoy_page=0x%x", (u32)hal_templates_start,
             (u32)hal_templates_end, (u32)hal_decoy_page);
}

/* ------------------------------------------------------------------ calls with bookkeeping */
/* Bookkeeping: `pending` is set before a TPR write and `last` after it; an interrupt that
 * lands in between accepts either value (the write may or may not have happened). */
#define CALL_IRQL(r, irql) (((irql_fn)roles[r].va)(irql))
#define CALL_VOID(r) (((void_fn)roles[r].va)())

static void check_eq(struct cpu* c, const char* check, u32 expected, u32 got, u32 eip) {
  inc(&c->tpr_reads);
  if (got != expected) {
    inc(&c->wrong_reads);
    report_fail(c, check, expected, got, eip);
  }
}

static u32 rnd(struct cpu* c) { return rng_next(&c->rng); }
static int use_alt(struct cpu* c) { return rnd(c) % v.alt_every == 0; }

/* KfRaiseIrql-like (fastcall IRQL, returns the old IRQL). */
static u32 raise_via(struct cpu* c, u32 r, u32 irql) {
  u32 prev = c->last, t = I2T(irql);
  c->pending = t;
  barrier();
  u32 old = CALL_IRQL(r, irql);
  barrier();
  c->last = t;
  c->pending = NOPEND;
  check_eq(c, roles[r].check, V2I(prev), old, roles[r].rd_va);
  return old;
}

/* KeRaiseIrqlToDpcLevel/ToSynchLevel-like: a fixed C7 value. */
static u32 raise_fixed(struct cpu* c, u32 r, u32 t) {
  u32 prev = c->last;
  c->pending = t;
  barrier();
  u32 old = CALL_VOID(r);
  barrier();
  c->last = t;
  c->pending = NOPEND;
  check_eq(c, roles[r].check, V2I(prev), old, roles[r].rd_va);
  return old;
}

static void lower_via(struct cpu* c, u32 r, u32 irql) {
  u32 t = I2T(irql);
  c->pending = t;
  barrier();
  u32 rb = CALL_IRQL(r, irql);
  barrier();
  c->last = t;
  c->pending = NOPEND;
  if (roles[r].has_rb) check_eq(c, roles[r].check, t, rb, roles[r].rd_va);
}

static void zero_via(struct cpu* c) {
  c->pending = 0;
  barrier();
  CALL_VOID(R_ZERO);
  barrier();
  c->last = 0;
  c->pending = NOPEND;
}

static void read_check(struct cpu* c, u32 r) {
  u32 expected = c->last;
  check_eq(c, roles[r].check, expected, CALL_VOID(r), roles[r].rd_va);
}

static void irql_check(struct cpu* c, u32 r) {
  u32 expected = V2I(c->last);
  check_eq(c, roles[r].check, expected, CALL_VOID(r), roles[r].rd_va);
}

static void reads(struct cpu* c) {
  read_check(c, use_alt(c) ? R_READ2 : R_READ);
  irql_check(c, use_alt(c) ? R_GET2 : R_GET);
}

static u32 raise_r(struct cpu* c) { return use_alt(c) ? R_RAISE2 : R_RAISE; }
static u32 lower_r(struct cpu* c) { return use_alt(c) ? R_LOWER2 : R_LOWER; }

/* cmp/test of the TPR: the flags must be those of the same instruction on the expected value. */
#define ARITH_FLAGS 0x8D5u
static u32 flags_cmp_00(u32 x) {
  u32 f;
  __asm__ volatile("cmpl $0, %1\n\tpushfl\n\tpopl %0" : "=r"(f) : "m"(x) : "cc");
  return f;
}
static u32 flags_cmp_41(u32 x) {
  u32 f;
  __asm__ volatile("cmpl $0x41, %1\n\tpushfl\n\tpopl %0" : "=r"(f) : "m"(x) : "cc");
  return f;
}
static u32 flags_test_f0(u32 x) {
  u32 f;
  __asm__ volatile("testl $0xF0, %1\n\tpushfl\n\tpopl %0" : "=r"(f) : "m"(x) : "cc");
  return f;
}

static void cmp_checks(struct cpu* c) {
  u32 t = c->last;
  check_eq(c, roles[R_CMP0].check, flags_cmp_00(t) & ARITH_FLAGS, CALL_VOID(R_CMP0) & ARITH_FLAGS,
           roles[R_CMP0].rd_va);
  check_eq(c, roles[R_CMP41].check, flags_cmp_41(t) & ARITH_FLAGS, CALL_VOID(R_CMP41) & ARITH_FLAGS,
           roles[R_CMP41].rd_va);
  check_eq(c, roles[R_TEST].check, flags_test_f0(t) & ARITH_FLAGS, CALL_VOID(R_TEST) & ARITH_FLAGS,
           roles[R_TEST].rd_va);
}

/* ------------------------------------------------------------------ shared DISPATCH locks */
struct spin {
  volatile u32 lock;
  volatile u32 owner;
  volatile u32 counter;
};
static struct spin dpc_lock = {0, NOPEND, 0}, synch_lock = {0, NOPEND, 0};

static void spin_section(struct cpu* c, struct spin* s, u32 tpr, int with_cmp) {
  while (__atomic_exchange_n(&s->lock, 1, __ATOMIC_ACQUIRE)) {
    while (s->lock) cpu_pause();
  }
  if (s->owner != NOPEND) report_fail(c, "spinlock", NOPEND, s->owner, 0);
  s->owner = c->index;
  s->counter++;
  read_check(c, R_READ);
  if (c->last != tpr) report_fail(c, "spinlock_irql", tpr, c->last, 0);
  if (with_cmp) cmp_checks(c);
  irql_check(c, use_alt(c) ? R_GET2 : R_GET);
  if (s->owner != c->index) report_fail(c, "spinlock", c->index, s->owner, 0);
  s->owner = NOPEND;
  __atomic_store_n(&s->lock, 0, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------------ masked self-IPIs */
static const u8 test_vectors[NUM_TEST_VECTORS] = {0x3D, 0x41, 0x51, 0x63, 0x93, 0xB3, 0xC3};
static const u8 raise_levels[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 27, 28, 29, 30, 31};
#define N_LEVELS (sizeof(raise_levels) / sizeof(raise_levels[0]))

static u32 pick_level(struct cpu* c, u32 min_class, u32 max_class) {
  for (;;) {
    u32 l = raise_levels[rnd(c) % N_LEVELS];
    u32 cls = I2T(l) >> 4;
    if (cls >= min_class && cls <= max_class) return l;
  }
}

static void send_self_ipi(u32 vec, int via_template) {
  u32 flags = irq_save();
  for (u32 i = 0; i < 100000 && (apic_read(APIC_ICR_LO) & 0x1000); i++) cpu_pause();
  if (via_template) {
    CALL_IRQL(R_ICR, 0x44000 | vec); /* self shorthand, fixed, assert */
  } else {
    apic_write(APIC_ICR_LO, 0x44000 | vec);
  }
  irq_restore(flags);
}

static void dup_checks(struct cpu* c) {
  for (u32 j = 0; j < NUM_TEST_VECTORS; j++) {
    u32 n = c->vec_count[j];
    if (n > c->vec_expect[j]) {
      inc(&c->mask_violations);
      report_fail_vec(c, "duplicate", test_vectors[j], c->vec_expect[j], n, 0);
      c->vec_expect[j] = n;
    }
  }
}

/* Runs at PASSIVE_LEVEL: raise to a level masking the vector's class, send a self-IPI, check
 * it stays pending, lower below its class, expect it exactly once. */
static void masked_test(struct cpu* c, int via_template) {
  dup_checks(c);
  u32 i = rnd(c) % NUM_TEST_VECTORS;
  u32 vec = test_vectors[i], cls = vec >> 4;
  u32 level = pick_level(c, cls, 15);
  u32 base = c->vec_count[i];
  u32 old = raise_via(c, raise_r(c), level);
  send_self_ipi(vec, via_template);
  reads(c);
  read_check(c, R_READ);
  if (c->vec_count[i] != base) {
    /* Already counted as a mask violation by the ISR; note the masked-test context too. */
    report_fail_vec(c, "masked_delivered", vec, base, c->vec_count[i], 0);
  }
  u32 target = 0;
  if (cls > 3 && rnd(c) % 2) target = pick_level(c, 0, cls - 1);
  if (target == 0 && rnd(c) % v.zero_every == 0) {
    zero_via(c);
  } else {
    lower_via(c, lower_r(c), target);
  }
  u64 deadline = rdtsc() + (u64)tsc_khz * 20;
  while (c->vec_count[i] == base && rdtsc() < deadline) cpu_pause();
  if (c->vec_count[i] == base) {
    inc(&c->lost_interrupts);
    report_fail_vec(c, via_template ? "lost_icr" : "lost", vec, base + 1, base,
                    via_template ? roles[R_ICR].va : 0);
  }
  c->vec_expect[i] = base + 1;
  reads(c);
  if (target != 0) lower_via(c, lower_r(c), old);
  inc(&c->mask_tests);
}

/* ------------------------------------------------------------------ rare paths */
static void rare_writer(struct cpu* c) {
  u32 fixed = roles[R_RARE_RAISE].fixed;
  static const u32 levels[] = {2, 4, 5, 8, 10, 12, 27};
  u32 irql = fixed != 0xFF ? fixed : levels[rnd(c) % 7];
  u32 old = raise_via(c, R_RARE_RAISE, irql);
  read_check(c, R_RARE_READ);
  irql_check(c, R_GET);
  lower_via(c, R_LOWER, old);
  read_check(c, R_RARE_READ);
  inc(&c->rare_runs);
}

static void regrel_path(struct cpu* c) {
  read_check(c, R_RR_READ);
  u32 prev = c->last;
  u32 irql = pick_level(c, 0, 12);
  u32 t = I2T(irql);
  c->pending = t;
  barrier();
  CALL_IRQL(R_RR_WRITE, irql);
  barrier();
  c->last = t;
  c->pending = NOPEND;
  read_check(c, R_RR_READ);
  reads(c);
  lower_via(c, lower_r(c), V2I(prev));
  read_check(c, R_RR_READ);
}

static void inject(struct cpu* c) {
  c->injected = 1;
  print_line("INJECT cpu=%u mode=%s uptime_ms=%u", c->index, inject_name(), uptime_ms());
  if (inject_mode == 1) {
    CALL_VOID(R_INJECT); /* TPR = 0x3D behind the bookkeeping's back */
  } else if (inject_mode == 2) {
    c->last = 0x41; /* bookkeeping says DISPATCH while the TPR is 0 */
  } else if (inject_mode == 3) {
    ((void_fn)(hal_code_area_end - 16))(); /* int3 filler after the last copy */
  } else if (inject_mode == 4) {
    __asm__ volatile("movl $0x40001000, %%esp\n\tint3" ::: "memory"); /* no stack: #PF, #DF */
  } else if (inject_mode == 5) {
    /* The page's last byte: padding after the decoys. */
    *(volatile u8*)((u32)hal_decoy_page_end - 1) ^= 0x5A;
  }
}

/* ------------------------------------------------------------------ one round */
static void round_once(struct cpu* c) {
  inc(&c->rounds);
  u32 n = c->rounds;
  if (inject_mode && c->index == 0 && !c->injected && uptime_ms() >= 1500) inject(c);

  /* PASSIVE: readers. */
  reads(c);

  /* A raise chain: KfRaiseIrql to L1, maybe nested to L2 >= L1, back down. */
  u32 l1 = raise_levels[rnd(c) % N_LEVELS];
  u32 old1 = raise_via(c, raise_r(c), l1);
  reads(c);
  if (rnd(c) % 2) {
    u32 l2 = pick_level(c, I2T(l1) >> 4, 15);
    if (l2 < l1) l2 = l1;
    u32 old2 = raise_via(c, raise_r(c), l2);
    reads(c);
    lower_via(c, lower_r(c), old2);
    reads(c);
  }
  if (old1 == 0 && rnd(c) % v.zero_every == 0) {
    zero_via(c);
  } else {
    lower_via(c, lower_r(c), old1);
  }
  reads(c);

  /* A spinlock section at DISPATCH_LEVEL (TPR 0x41) shared by all CPUs. */
  u32 old = raise_fixed(c, R_DPC, 0x41);
  spin_section(c, &dpc_lock, 0x41, n % v.cmp_every == 0);
  lower_via(c, lower_r(c), old);

  /* A section at SYNCH_LEVEL (TPR 0xC1). */
  if (n % 2 == 0) {
    old = raise_fixed(c, R_SYNCH, 0xC1);
    spin_section(c, &synch_lock, 0xC1, 0);
    lower_via(c, lower_r(c), old);
  }

  if (n % v.mask_every == 0) masked_test(c, 0);
  if (n % v.icr_every == 0) masked_test(c, 1);
  if (v.regrel_every != 0 && n % v.regrel_every == 0) regrel_path(c);
  if (n % v.cmp_every == 0) cmp_checks(c);
  u64 now = rdtsc();
  if (now >= c->next_rare_tsc) {
    rare_writer(c);
    c->next_rare_tsc += (u64)tsc_khz * v.rare_ms;
    if (c->next_rare_tsc < now) c->next_rare_tsc = now + (u64)tsc_khz * v.rare_ms;
  }
  if (c->last != 0) {
    /* Only after a failed read: the HAL returns to the IRQL it read. Back to PASSIVE. */
    report_fail(c, "round_end", 0, c->last, 0);
    lower_via(c, R_LOWER, 0);
  }
}

/* The decoy page is data that only looks like TPR accesses: nothing may ever change it (under KVM
 * a software breakpoint on it would read as int3). FNV-1a of the page. */
static u32 decoy_page_sum(void) {
  u32 sum = 2166136261u;
  for (const volatile u8* b = hal_decoy_page; b < hal_decoy_page_end; ++b) {
    sum = (sum ^ *b) * 16777619u;
  }
  return sum;
}

static void print_stat(struct cpu* c) {
  const u32 sum = decoy_page_sum();
  if (sum != c->decoy_sum) report_fail(c, "decoy_bytes", c->decoy_sum, sum, (u32)hal_decoy_page);
  print_line(
      "STAT cpu=%u rounds=%u tpr_reads=%u wrong_reads=%u mask_violations=%u lost_interrupts=%u "
      "timer_ticks=%u ipis=%u rare_runs=%u uptime_ms=%u mask_tests=%u spurious=%u idles=%u",
      c->index, c->rounds, c->tpr_reads, c->wrong_reads, c->mask_violations, c->lost_interrupts,
      c->timer_ticks, c->ipis, c->rare_runs, uptime_ms(), c->mask_tests, c->spurious, c->idles);
}

void hal_cpu_init(struct cpu* c) {
  c->rng = (seed + 1) * 0x85EBCA6Bu ^ (c->index + 1) * 0xC2B2AE35u;
  if (!c->rng) c->rng = 1;
  c->pending = NOPEND;
  c->decoy_sum = decoy_page_sum();
  zero_via(c); /* MoveZeroToTpr at processor initialisation */
  c->ipi_target = (c->index + 1) % MAX_CPUS;
}

void cpu_run(struct cpu* c) {
  u64 second = (u64)tsc_khz * 1000;
  u64 now = rdtsc();
  c->next_stat_tsc = tsc_boot + second * (div64_32(now - tsc_boot, tsc_khz) / 1000 + 1);
  c->next_rare_tsc = now + (u64)tsc_khz * v.rare_ms;
  apic_timer_start(v.timer_hz);
  irq_enable();
  u64 idle = (u64)tsc_khz * IDLE_EVERY_MS;
  u64 next_idle = now + idle;
  for (;;) {
    round_once(c);
    now = rdtsc();
    if (now >= next_idle) {
      /* The idle loop as NT's KiIdleLoop runs it: at DISPATCH_LEVEL (TPR 0x41, whose low
       * nibble a CR8 write loses), halted until the next interrupt (at most one timer period,
       * whose vector class is above DISPATCH), which also leaves host CPU time to QEMU's timer
       * thread. A tprd leaving cr8 meets CPUs halted here. */
      u32 old = raise_fixed(c, R_DPC, 0x41);
      /* idle=heavy: an idle machine's CPU, halted for most of its time (four timer periods
       * after every round), which is what a tprd leaving cr8 meets on a real idle guest. */
      for (u32 n = 0; n < (idle_heavy ? 4u : 1u); n++) {
        __asm__ volatile("hlt" ::: "memory");
        inc(&c->idles);
        reads(c);
      }
      lower_via(c, lower_r(c), old);
      next_idle = now + (idle_heavy ? 0 : idle);
    }
    if (rdtsc() >= c->next_stat_tsc) {
      print_stat(c);
      dup_checks(c);
      c->next_stat_tsc += second;
      now = rdtsc();
      if (c->next_stat_tsc < now) c->next_stat_tsc = now + second;
    }
  }
}

/* ------------------------------------------------------------------ interrupts */
/* Windows-like: HalBeginSystemInterrupt raises to the vector's IRQL through KfRaiseIrql,
 * interrupts go back on, the body runs, then EOI and KfLowerIrql back to the old IRQL with
 * interrupts off, restoring the interrupted context's bookkeeping. */
void interrupt_entry(struct cpu* c, struct frame* f) {
  u32 vec = f->vector;
  if (vec == VEC_SPURIOUS) {
    inc(&c->spurious);
    return;
  }
  u32 last = c->last, pend = c->pending;
  u32 eff = (pend != NOPEND && pend < last) ? pend : last;
  if ((vec >> 4) <= (eff >> 4)) {
    inc(&c->mask_violations);
    report_fail_vec(c, "mask", vec, eff, vec, f->eip);
  }
  u32 irql = V2I(vec);
  u32 old = CALL_IRQL(R_RAISE, irql);
  inc(&c->tpr_reads);
  if (old != V2I(last) && !(pend != NOPEND && old == V2I(pend))) {
    inc(&c->wrong_reads);
    report_fail(c, "read/isr_KfRaiseIrql", V2I(last), old, roles[R_RAISE].rd_va);
  }
  c->last = I2T(irql);
  c->pending = NOPEND;
  irq_enable();

  read_check(c, R_READ);
  if (vec == VEC_TIMER) {
    inc(&c->timer_ticks);
    u32 t = c->timer_ticks;
    if (online_cpus > 1 && v.ipi_ticks && t % v.ipi_ticks == 0) {
      u32 target = c->ipi_target % online_cpus;
      if (target == c->index) target = (target + 1) % online_cpus;
      c->ipi_target = target + 1;
      send_ipi(cpus[target].apic_id, 0x4000 | VEC_IPI);
    }
  } else if (vec == VEC_IPI) {
    inc(&c->ipis);
  } else {
    u32 j = 0;
    while (j < NUM_TEST_VECTORS && test_vectors[j] != vec) j++;
    if (j < NUM_TEST_VECTORS) {
      inc(&c->vec_count[j]);
    } else {
      report_fail_vec(c, "unexpected_vector", vec, 0, vec, f->eip);
    }
  }
  irql_check(c, R_GET);

  irq_disable();
  apic_write(APIC_EOI, 0);
  u32 rb = CALL_IRQL(R_LOWER, old);
  if (roles[R_LOWER].has_rb) check_eq(c, roles[R_LOWER].check, I2T(old), rb, roles[R_LOWER].rd_va);
  c->last = last;
  c->pending = pend;
}
