/* Internal interfaces between the guest kernel's C files. */
#ifndef TPRD_TESTS_GUEST_KERNEL_H_
#define TPRD_TESTS_GUEST_KERNEL_H_
#include "guest.h"

struct isr_frame {
  uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;
  uint32_t vector, error;
  uint32_t eip, cs, eflags;
};

struct cpu_state {
  uint32_t kpcr;
  uint32_t rounds;
  uint32_t pass;
  uint32_t fail;
  uint32_t fail_lines;
  uint32_t late_reported;
  volatile uint32_t irq_count[256];
};

struct boot_options {
  uint32_t late_enabled;
  uint32_t late_seconds;
  uint32_t selftest;
  uint32_t regwrite;
  uint32_t nobench;
  uint32_t gapwatch;
  uint32_t module_phys;
  uint32_t module_size;
};

extern struct cpu_state cpus[MAX_CPUS];
extern struct boot_options options;
extern volatile uint32_t boot_done;

static inline void outb(uint16_t port, uint8_t value) {
  __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
/* rdtsc after cpuid, so earlier instructions have finished. */
static inline uint64_t rdtsc_serialized(void) {
  uint32_t a = 0, b, c = 0, d;
  __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d)::"memory");
  return rdtsc();
}
static inline uint32_t read_eflags(void) {
  uint32_t f;
  __asm__ volatile("pushfl; popl %0" : "=r"(f));
  return f;
}

void* memset(void* dst, int value, size_t n);
void* memcpy(void* dst, const void* src, size_t n);
uint64_t udiv64(uint64_t n, uint32_t d);
void kprintf(const char* fmt, ...);
uint64_t uptime_ms(void);
uint64_t ms_to_tsc(uint32_t ms);
void delay_ms(uint32_t ms);
uint32_t apic_read(uint32_t reg);
void apic_write(uint32_t reg, uint32_t value);
uint32_t current_cpu(void);
uint32_t online_cpu_count(void);
uint32_t fs_scratch_clobber(void);
void isr_dispatch(struct isr_frame* frame);
NORETURN void kernel_main(uint32_t magic, uint32_t mbi_phys);
NORETURN void ap_entry(uint32_t number);
NORETURN void cpu_main(uint32_t number);
void selftest_run(void);
#endif /* TPRD_TESTS_GUEST_KERNEL_H_ */
