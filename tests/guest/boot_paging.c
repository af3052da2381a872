/* Builds the guest's page tables before paging is on. Linked into the identity-mapped boot
 * area (see linker.ld), so it may only touch its own data and the multiboot info. The layout
 * copies what tprd expects of Windows XP: low RAM at 0x80000000, the local APIC at 0xFFFE0000
 * (uncached), the first 4 MiB also identity-mapped for the boot stub and the AP trampoline. */
#include "guest.h"

#define PG_PRESENT 0x001u
#define PG_WRITE 0x002u
#define PG_PWT 0x008u
#define PG_PCD 0x010u
#define PG_LARGE 0x080u
#define CR4_PSE 0x10u
#define CR4_PAE 0x20u
/* Enough for the guests the tests start; larger RAM stays unmapped above the cap. */
#define RAM_MAP_CAP (256u << 20)

struct boot_paging boot_paging_result;

static uint32_t usable_ram_bytes(const uint32_t* mbi, uint32_t granule) {
  uint32_t ram = 32u << 20;
  if (mbi && (mbi[0] & 1u)) {
    uint32_t upper_kib = mbi[2];
    if (upper_kib > (RAM_MAP_CAP >> 10)) upper_kib = RAM_MAP_CAP >> 10;
    ram = 0x100000u + (upper_kib << 10);
  }
  if (ram > RAM_MAP_CAP) ram = RAM_MAP_CAP;
  ram &= ~(granule - 1);
  if (ram < (4u << 20)) ram = 4u << 20;
  return ram;
}

#ifndef GUEST_PAE
static uint32_t pd[1024] __attribute__((aligned(4096)));
static uint32_t pt_low[1024] __attribute__((aligned(4096)));
static uint32_t pt_apic[1024] __attribute__((aligned(4096)));

void boot_build_page_tables(const uint32_t* mbi) {
  uint32_t ram = usable_ram_bytes(mbi, 4u << 20);
  for (uint32_t i = 0; i < 1024; ++i) pt_low[i] = (i << 12) | PG_PRESENT | PG_WRITE;
  pd[0] = (uint32_t)pt_low | PG_PRESENT | PG_WRITE;
  pd[KERNEL_OFFSET >> 22] = (uint32_t)pt_low | PG_PRESENT | PG_WRITE;
  for (uint32_t phys = 4u << 20; phys < ram; phys += 4u << 20) {
    pd[(KERNEL_OFFSET + phys) >> 22] = phys | PG_PRESENT | PG_WRITE | PG_LARGE;
  }
  pt_apic[(APIC_VA >> 12) & 0x3FF] = APIC_PHYS | PG_PRESENT | PG_WRITE | PG_PWT | PG_PCD;
  pd[APIC_VA >> 22] = (uint32_t)pt_apic | PG_PRESENT | PG_WRITE;
  boot_paging_result.cr3 = (uint32_t)pd;
  boot_paging_result.cr4 = CR4_PSE;
  boot_paging_result.ram_mapped_bytes = ram;
}
#else
static uint64_t pdpt[4] __attribute__((aligned(32)));
static uint64_t pd_low[512] __attribute__((aligned(4096)));
static uint64_t pd_kernel[512] __attribute__((aligned(4096)));
static uint64_t pd_top[512] __attribute__((aligned(4096)));
static uint64_t pt_low[512] __attribute__((aligned(4096)));
static uint64_t pt_apic[512] __attribute__((aligned(4096)));

void boot_build_page_tables(const uint32_t* mbi) {
  uint32_t ram = usable_ram_bytes(mbi, 2u << 20);
  for (uint32_t i = 0; i < 512; ++i) pt_low[i] = (i << 12) | PG_PRESENT | PG_WRITE;
  pd_low[0] = (uint32_t)pt_low | PG_PRESENT | PG_WRITE;
  pd_low[1] = (2u << 20) | PG_PRESENT | PG_WRITE | PG_LARGE;
  pd_kernel[0] = (uint32_t)pt_low | PG_PRESENT | PG_WRITE;
  for (uint32_t phys = 2u << 20; phys < ram; phys += 2u << 20) {
    pd_kernel[phys >> 21] = phys | PG_PRESENT | PG_WRITE | PG_LARGE;
  }
  pt_apic[(APIC_VA >> 12) & 0x1FF] = APIC_PHYS | PG_PRESENT | PG_WRITE | PG_PWT | PG_PCD;
  pd_top[(APIC_VA >> 21) & 0x1FF] = (uint32_t)pt_apic | PG_PRESENT | PG_WRITE;
  /* PDPT entries allow only P, PWT and PCD: RW there is a reserved bit. */
  pdpt[0] = (uint32_t)pd_low | PG_PRESENT;
  pdpt[2] = (uint32_t)pd_kernel | PG_PRESENT;
  pdpt[3] = (uint32_t)pd_top | PG_PRESENT;
  boot_paging_result.cr3 = (uint32_t)pdpt;
  boot_paging_result.cr4 = CR4_PAE | CR4_PSE;
  boot_paging_result.ram_mapped_bytes = ram;
}
#endif
