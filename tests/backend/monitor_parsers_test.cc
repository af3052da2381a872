// Monitor parsers against output captured from QEMU 7.2 under libvirt 9.0 (Debian 12), with
// the capture noted next to each sample, plus malformed variants.
#include "kvm-backend/core/monitor_parsers.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tprd::backend {
namespace {

using ::testing::HasSubstr;

// `info lapic 0` of a 2-vCPU pc machine sitting in SeaBIOS (TPR 0).
constexpr char kLapicCpu0[] = R"(dumping local APIC state for CPU 0 

LVT0	 0x00008700 active-hi level                             ExtINT (vec 0)
LVT1	 0x00008400 active-hi level                             NMI   
LVTPC	 0x00010000 active-hi edge  masked                      Fixed  (vec 0)
LVTERR	 0x00010000 active-hi edge  masked                      Fixed  (vec 0)
LVTTHMR	 0x00010000 active-hi edge  masked                      Fixed  (vec 0)
LVTT	 0x00010000 active-hi edge  masked         one-shot     Fixed  (vec 0)
Timer	 DCR=0x0 (divide by 2) initial_count = 0 current_count = 0
SPIV	 0x000001ff APIC enabled, focus=off, spurious vec 255
ICR	 0x000c4610 physical edge assert all
ICR2	 0x00000000
ESR	 0x00000000
ISR	 (none)
IRR	 (none)

APR 0x00 TPR 0x00 DFR 0x0f LDR 0x00 PPR 0x00)";

// `info mtree -f` of a pc machine with QEMU's vapic off, no VGA (the I/O port view trimmed to
// its first five ranges).
constexpr char kMtreeVapicOff[] = R"(FlatView #0
 AS "i440FX", root: bus master container
 AS "PIIX3", root: bus master container
 AS "piix3-ide", root: bus master container
 AS "virtio-balloon-pci", root: bus master container
 Root memory region: (none)
  No rendered FlatView

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
  0000000000000008-000000000000000f (prio 0, i/o): dma-cont
  0000000000000010-000000000000001f (prio 0, i/o): io @0000000000000010
  0000000000000020-0000000000000021 (prio 0, i/o): pic
  0000000000000022-000000000000003f (prio 0, i/o): io @0000000000000022

FlatView #2
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 AS "cpu-memory-1", root: system
 AS "piix3-usb-uhci", root: bus master container
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000e7fff (prio 0, rom): pc.ram @00000000000c0000
  00000000000e8000-00000000000effff (prio 0, ram): pc.ram @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): pc.ram @00000000000f0000
  0000000000100000-0000000003ffffff (prio 0, ram): pc.ram @0000000000100000
  00000000febfc000-00000000febfcfff (prio 0, i/o): virtio-pci-common-virtio-balloon
  00000000febfd000-00000000febfdfff (prio 0, i/o): virtio-pci-isr-virtio-balloon
  00000000febfe000-00000000febfefff (prio 0, i/o): virtio-pci-device-virtio-balloon
  00000000febff000-00000000febfffff (prio 0, i/o): virtio-pci-notify-virtio-balloon
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #3
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000e7fff (prio 0, rom): pc.ram @00000000000c0000
  00000000000e8000-00000000000effff (prio 0, ram): pc.ram @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): pc.ram @00000000000f0000
  0000000000100000-0000000003ffffff (prio 0, ram): pc.ram @0000000000100000
  00000000febfc000-00000000febfcfff (prio 0, i/o): virtio-pci-common-virtio-balloon
  00000000febfd000-00000000febfdfff (prio 0, i/o): virtio-pci-isr-virtio-balloon
  00000000febfe000-00000000febfefff (prio 0, i/o): virtio-pci-device-virtio-balloon
  00000000febff000-00000000febfffff (prio 0, i/o): virtio-pci-notify-virtio-balloon
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #4
 AS "cpu-smm-1", root: memory
 Root memory region: memory
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000e7fff (prio 0, rom): pc.ram @00000000000c0000
  00000000000e8000-00000000000effff (prio 0, ram): pc.ram @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): pc.ram @00000000000f0000
  0000000000100000-0000000003ffffff (prio 0, ram): pc.ram @0000000000100000
  00000000febfc000-00000000febfcfff (prio 0, i/o): virtio-pci-common-virtio-balloon
  00000000febfd000-00000000febfdfff (prio 0, i/o): virtio-pci-isr-virtio-balloon
  00000000febfe000-00000000febfefff (prio 0, i/o): virtio-pci-device-virtio-balloon
  00000000febff000-00000000febfffff (prio 0, i/o): virtio-pci-notify-virtio-balloon
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios)";

// `info mtree -f` with VGA, an e1000 and QEMU's vapic ON: the VGA ROM moves the ROM
// boundaries and the vapic option ROM page cb000-cdfff is RAM (trimmed to the memory view).
constexpr char kMtreeVapicOnWithOptionRoms[] = R"(FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 AS "piix3-usb-uhci", root: bus master container
 AS "e1000", root: bus master container
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000cafff (prio 0, rom): pc.ram @00000000000c0000
  00000000000cb000-00000000000cdfff (prio 0, ram): pc.ram @00000000000cb000
  00000000000ce000-00000000000e7fff (prio 0, rom): pc.ram @00000000000ce000
  00000000000e8000-00000000000effff (prio 0, ram): pc.ram @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): pc.ram @00000000000f0000
  0000000000100000-0000000003ffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram
  00000000febc0000-00000000febdffff (prio 1, i/o): e1000-mmio
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #2
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram
)";

TEST(ParseLapicTpr, ReadsTprOfCapturedOutput) {
  absl::StatusOr<uint8_t> tpr = ParseLapicTpr(kLapicCpu0);
  ASSERT_TRUE(tpr.ok()) << tpr.status();
  EXPECT_EQ(*tpr, 0x00);
}

TEST(ParseLapicTpr, ReadsFullEightBits) {
  std::string text = kLapicCpu0;
  size_t at = text.find("TPR 0x00");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 8, "TPR 0xd3");
  absl::StatusOr<uint8_t> tpr = ParseLapicTpr(text);
  ASSERT_TRUE(tpr.ok()) << tpr.status();
  EXPECT_EQ(*tpr, 0xd3);
}

// The gdbstub's monitor (qRcmd) ends its lines with \r\n, as a character device monitor does.
TEST(ParseLapicTpr, ReadsTheGdbstubMonitorsCrLfLines) {
  absl::StatusOr<uint8_t> tpr = ParseLapicTpr(
      "dumping local APIC state for CPU 1 \r\n\r\nISR\t (none)\r\n\r\nAPR 0x00 TPR 0x68 DFR 0x0f "
      "LDR 0x00 PPR 0x68\r\n");
  ASSERT_TRUE(tpr.ok()) << tpr.status();
  EXPECT_EQ(*tpr, 0x68);
}

TEST(ParseLapicTpr, NoCpuIsNotFound) {
  EXPECT_EQ(ParseLapicTpr("No CPU available\r\n").status().code(), absl::StatusCode::kNotFound);
}

TEST(ParseLapicTpr, RejectsMissingOrOversizedTpr) {
  EXPECT_FALSE(ParseLapicTpr("APR 0x00 DFR 0x0f LDR 0x00 PPR 0x00").ok());
  EXPECT_FALSE(ParseLapicTpr("APR 0x00 TPR 0x100 PPR 0x00").ok());
  EXPECT_FALSE(ParseLapicTpr("APR 0x00 TPR zz PPR 0x00").ok());
  EXPECT_FALSE(ParseLapicTpr("APR 0x00 TPR").ok());
  EXPECT_FALSE(ParseLapicTpr("").ok());
}

TEST(ParseMtreeFlat, TakesTheMemoryViewOfCapturedOutput) {
  absl::StatusOr<std::vector<engine::MemoryRegion>> regions = ParseMtreeFlat(kMtreeVapicOff);
  ASSERT_TRUE(regions.ok()) << regions.status();
  ASSERT_EQ(regions->size(), 13u);
  const engine::MemoryRegion& low = (*regions)[0];
  EXPECT_EQ(low.start, 0u);
  EXPECT_EQ(low.end, 0xbffffu);
  EXPECT_TRUE(low.ram);
  EXPECT_EQ(low.name, "pc.ram");
  EXPECT_EQ((*regions)[1].start, 0xc0000u);
  EXPECT_EQ((*regions)[1].end, 0xe7fffu);
  EXPECT_FALSE((*regions)[1].ram);
  EXPECT_TRUE((*regions)[1].rom) << "the shadowed window is RAM-backed, read-only";
  EXPECT_FALSE((*regions)[2].rom);
  EXPECT_EQ((*regions)[2].start, 0xe8000u);
  EXPECT_EQ((*regions)[2].end, 0xeffffu);
  EXPECT_TRUE((*regions)[2].ram);
  EXPECT_FALSE((*regions)[3].ram);  // f0000-fffff BIOS shadow is ROM
  EXPECT_EQ((*regions)[4].end, 0x3ffffffu);
  const engine::MemoryRegion& apic = (*regions)[11];
  EXPECT_EQ(apic.start, 0xfee00000u);
  EXPECT_FALSE(apic.ram);
  EXPECT_FALSE(apic.rom);
  EXPECT_EQ(apic.name, "apic-msi");
  EXPECT_EQ(regions->back().name, "pc.bios");
  EXPECT_EQ(regions->back().end, 0xffffffffu);
}

TEST(ParseMtreeFlat, CopesWithOptionRomsAndVapicRam) {
  absl::StatusOr<std::vector<engine::MemoryRegion>> regions =
      ParseMtreeFlat(kMtreeVapicOnWithOptionRoms);
  ASSERT_TRUE(regions.ok()) << regions.status();
  std::vector<std::pair<uint64_t, bool>> legacy;
  for (const auto& r : *regions) {
    if (r.start >= 0xc0000 && r.end <= 0xfffff) legacy.push_back({r.start, r.ram});
  }
  EXPECT_THAT(legacy, ::testing::ElementsAre(std::pair<uint64_t, bool>{0xc0000, false},
                                             std::pair<uint64_t, bool>{0xcb000, true},
                                             std::pair<uint64_t, bool>{0xce000, false},
                                             std::pair<uint64_t, bool>{0xe8000, true},
                                             std::pair<uint64_t, bool>{0xf0000, false}));
  // The SMM view that follows is not merged in: one pc.ram range at 0.
  int at_zero = 0;
  for (const auto& r : *regions) at_zero += r.start == 0;
  EXPECT_EQ(at_zero, 1);
}

TEST(ParseMtreeFlat, RejectsOutputWithoutMemoryView) {
  EXPECT_FALSE(ParseMtreeFlat("").ok());
  EXPECT_FALSE(ParseMtreeFlat("FlatView #0\n AS \"I/O\", root: io\n Root memory region: io\n"
                              "  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\n")
                   .ok());
  EXPECT_FALSE(ParseMtreeFlat("FlatView #0\n AS \"memory\", root: system\n").ok());
}

TEST(ParseMtreeFlat, RejectsMalformedRanges) {
  const std::string head =
      "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n";
  EXPECT_FALSE(ParseMtreeFlat(head + "  00-zz (prio 0, ram): pc.ram\n").ok());
  EXPECT_FALSE(
      ParseMtreeFlat(head + "  0000000000000010-0000000000000000 (prio 0, ram): x\n").ok());
  EXPECT_FALSE(ParseMtreeFlat(head + "  0000000000000000-0000000000000010 ram pc.ram\n").ok());
  EXPECT_FALSE(
      ParseMtreeFlat(head + "  0000000000000000-00000000000000100000000 (prio 0, ram): x\n").ok());
}

TEST(ParseGpa2Hva, ReadsCapturedReplies) {
  absl::StatusOr<uint64_t> hva =
      ParseGpa2Hva("Host virtual address for 0x100000 (pc.ram) is 0x7f922ff00000\r\n");
  ASSERT_TRUE(hva.ok()) << hva.status();
  EXPECT_EQ(*hva, 0x7f922ff00000u);
  EXPECT_EQ(ParseGpa2Hva("No memory is mapped at address 0x10000000\r\n").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ParseGpa2Hva("Memory at address 0xfee00000 is not RAM\r\n").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(ParseGpa2Hva("Host virtual address for 0x0 (pc.ram) is 0xnothex").ok());
  EXPECT_FALSE(ParseGpa2Hva("unknown command: 'gpa2hva'").ok());
}

TEST(CheckGdbserverReply, ClassifiesCapturedReplies) {
  EXPECT_TRUE(CheckGdbserverReply("Waiting for gdb connection on device "
                                  "'unix:/run/tprd/gdb/x.sock,server=on,wait=off'\r\n")
                  .ok());
  EXPECT_TRUE(CheckGdbserverReply("Disabled gdbserver\r\n").ok());
  EXPECT_EQ(CheckGdbserverReply("duplicate yank instance\r\nCould not open gdbserver on device "
                                "'unix:/run/tprd/gdb/y.sock,server=on,wait=off'\r\n")
                .code(),
            absl::StatusCode::kAlreadyExists);
  absl::Status other = CheckGdbserverReply("Could not open gdbserver on device 'x'\r\n");
  EXPECT_EQ(other.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(other.message()), HasSubstr("Could not open gdbserver"));
}

TEST(ParseQueryCpusFast, ReadsCapturedReply) {
  constexpr char kReply[] =
      R"({"return":[{"thread-id":7740,"props":{"core-id":0,"thread-id":0,"socket-id":1},)"
      R"("qom-path":"/machine/unattached/device[1]","cpu-index":1,"target":"i386"},)"
      R"({"thread-id":7739,"props":{"core-id":0,"thread-id":0,"socket-id":0},)"
      R"("qom-path":"/machine/unattached/device[0]","cpu-index":0,"target":"i386"}],)"
      R"("id":"libvirt-25"})";
  absl::StatusOr<std::vector<QemuCpu>> cpus = ParseQueryCpusFast(kReply);
  ASSERT_TRUE(cpus.ok()) << cpus.status();
  ASSERT_EQ(cpus->size(), 2u);
  EXPECT_EQ((*cpus)[0].cpu_index, 0);
  EXPECT_EQ((*cpus)[0].qom_path, "/machine/unattached/device[0]");
  EXPECT_EQ((*cpus)[0].host_thread_id, 7739);
  EXPECT_EQ((*cpus)[1].qom_path, "/machine/unattached/device[1]");
}

TEST(ParseQueryCpusFast, RejectsBadShapes) {
  EXPECT_FALSE(ParseQueryCpusFast("not json").ok());
  EXPECT_FALSE(ParseQueryCpusFast(R"({"return":{}})").ok());
  EXPECT_FALSE(ParseQueryCpusFast(R"({"return":[{"cpu-index":"0","qom-path":"/x"}]})").ok());
  EXPECT_FALSE(ParseQueryCpusFast(R"({"return":[{"cpu-index":-1,"qom-path":"/x"}]})").ok());
  EXPECT_FALSE(
      ParseQueryCpusFast(
          R"({"return":[{"cpu-index":0,"qom-path":"/x"},{"cpu-index":0,"qom-path":"/y"}]})")
          .ok());
}

TEST(ParseQueryKvmEnabled, TellsKvmFromTcg) {
  absl::StatusOr<bool> tcg =
      ParseQueryKvmEnabled(R"({"return":{"enabled":false,"present":true},"id":"libvirt-31"})");
  ASSERT_TRUE(tcg.ok()) << tcg.status();
  EXPECT_FALSE(*tcg);
  absl::StatusOr<bool> kvm = ParseQueryKvmEnabled(R"({"return":{"present":true,"enabled":true}})");
  ASSERT_TRUE(kvm.ok()) << kvm.status();
  EXPECT_TRUE(*kvm);
  EXPECT_FALSE(ParseQueryKvmEnabled(R"({"return":{"present":true}})").ok());
  EXPECT_FALSE(ParseQueryKvmEnabled(R"({"return":{"enabled":"yes"}})").ok());
  EXPECT_FALSE(ParseQueryKvmEnabled(R"({"return":true})").ok());
  EXPECT_FALSE(
      ParseQueryKvmEnabled(R"({"error":{"class":"CommandNotFound","desc":"no query-kvm"}})").ok());
}

TEST(ParseQomGetBool, ReadsCapturedReplies) {
  absl::StatusOr<bool> off = ParseQomGetBool(R"({"return":false,"id":"libvirt-26"})");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(*off);
  absl::StatusOr<bool> on = ParseQomGetBool(R"({"return":true,"id":"libvirt-20"})");
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_TRUE(*on);
  absl::StatusOr<bool> missing = ParseQomGetBool(
      R"({"id":"libvirt-28","error":{"class":"DeviceNotFound","desc":"Device '/machine/unattached/device[9]/lapic' not found"}})");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("device[9]"));
  EXPECT_FALSE(ParseQomGetBool(R"({"return":"yes"})").ok());
  EXPECT_FALSE(ParseQomGetBool(R"({"error":"weird"})").ok());
  EXPECT_FALSE(ParseQomGetBool(R"([true])").ok());
}

TEST(ParseQueryStatus, TellsDebugFromPaused) {
  absl::StatusOr<QemuRunStatus> debug =
      ParseQueryStatus(R"({"return":{"status":"debug","singlestep":false,"running":false}})");
  ASSERT_TRUE(debug.ok()) << debug.status();
  EXPECT_FALSE(debug->running);
  EXPECT_EQ(debug->status, "debug");
  absl::StatusOr<QemuRunStatus> running =
      ParseQueryStatus(R"({"return":{"status":"running","singlestep":false,"running":true}})");
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_TRUE(running->running);
  EXPECT_FALSE(ParseQueryStatus(R"({"return":{"status":1,"running":true}})").ok());
}

TEST(QomGetCommand, EscapesArguments) {
  EXPECT_EQ(QomGetCommand("/machine/unattached/device[0]/lapic", "vapic"),
            R"({"arguments":{"path":"/machine/unattached/device[0]/lapic","property":"vapic"},)"
            R"("execute":"qom-get"})");
  EXPECT_THAT(QomGetCommand("a\"b", "c"), HasSubstr(R"(a\"b)"));
}

}  // namespace
TEST(ParseQueryChardev, ReadsACapturedReply) {
  // QEMU 7.2 with tprd's channel and a gdbstub client gone (kill -9).
  absl::StatusOr<std::vector<QemuChardev>> chardevs = ParseQueryChardev(
      R"({"return":[{"frontend-open":true,"filename":"gdb","label":"#chr054"},)"
      R"({"frontend-open":true,"filename":"disconnected:fd:tprd-gdb-7-0","label":"tprd-gdb-7-0"},)"
      R"({"frontend-open":false,"filename":"unix:","label":"tprd-gdb-7-1"}],"id":"libvirt-26"})");
  ASSERT_TRUE(chardevs.ok()) << chardevs.status();
  ASSERT_EQ(chardevs->size(), 3u);
  EXPECT_EQ((*chardevs)[1].label, "tprd-gdb-7-0");
  EXPECT_EQ((*chardevs)[1].filename, "disconnected:fd:tprd-gdb-7-0");
  EXPECT_TRUE((*chardevs)[1].frontend_open);
  EXPECT_FALSE((*chardevs)[2].frontend_open);
}

TEST(ParseQueryChardev, RefusesOddShapes) {
  EXPECT_FALSE(ParseQueryChardev(R"({"return":{}})").ok());
  EXPECT_FALSE(ParseQueryChardev(R"({"return":[{"label":"x","filename":"y"}]})").ok());
  EXPECT_FALSE(
      ParseQueryChardev(R"({"return":[{"label":1,"filename":"y","frontend-open":true}]})").ok());
  EXPECT_FALSE(ParseQueryChardev("not json").ok());
  EXPECT_FALSE(ParseQueryChardev(R"({"error":{"class":"GenericError","desc":"x"}})").ok());
}

TEST(GdbChannelCommands, AreTheJsonQemuAccepted) {
  // The exact commands verified against QEMU 7.2 through virsh (docs/design-notes/backend.md).
  EXPECT_EQ(GetfdCommand("tprd-gdb-1-0"),
            R"({"arguments":{"fdname":"tprd-gdb-1-0"},"execute":"getfd"})");
  EXPECT_EQ(ClosefdCommand("a\"b"), R"({"arguments":{"fdname":"a\"b"},"execute":"closefd"})");
  EXPECT_EQ(ChardevAddSocketFdCommand("tprd-gdb-1-0", "tprd-gdb-1-0"),
            R"({"arguments":{"backend":{"data":{"addr":{"data":{"str":"tprd-gdb-1-0"},)"
            R"("type":"fd"},"server":false},"type":"socket"},"id":"tprd-gdb-1-0"},)"
            R"("execute":"chardev-add"})");
  EXPECT_EQ(ChardevRemoveCommand("x"), R"({"arguments":{"id":"x"},"execute":"chardev-remove"})");
  EXPECT_TRUE(CheckQmpSuccess(R"({"return":{},"id":"libvirt-18"})").ok());
  EXPECT_FALSE(
      CheckQmpSuccess(
          R"({"error":{"class":"GenericError","desc":"No file descriptor supplied via SCM_RIGHTS"}})")
          .ok());
}

}  // namespace tprd::backend

namespace tprd::backend {
namespace {

// Captured from QEMU 7.2 (`info mtree`, pc-i440fx-7.2 with <acpi/>), shortened.
constexpr char kMtreeWithAcpi[] = R"(address-space: cpu-memory-0
address-space: memory
  0000000000000000-ffffffffffffffff (prio 0, i/o): system
    0000000000000608-000000000000060b (prio 0, i/o): acpi-tmr-lookalike-in-memory

address-space: I/O
  0000000000000000-000000000000ffff (prio 0, i/o): io
    0000000000000040-0000000000000043 (prio 0, i/o): pit
    0000000000000600-000000000000063f (prio 0, i/o): piix4-pm
      0000000000000600-0000000000000603 (prio 0, i/o): acpi-evt
      0000000000000604-0000000000000605 (prio 0, i/o): acpi-cnt
      0000000000000608-000000000000060b (prio 0, i/o): acpi-tmr
    0000000000000700-000000000000073f (prio 0, i/o): pm-smbus

address-space: PIIX4_PM
  0000000000000000-ffffffffffffffff (prio 0, i/o): bus master container
)";

TEST(ParseAcpiPmTimerPort, FindsTheTimerInTheIoAddressSpace) {
  absl::StatusOr<uint16_t> port = ParseAcpiPmTimerPort(kMtreeWithAcpi);
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_EQ(*port, 0x608);
}

TEST(ParseAcpiPmTimerPort, NotFoundWithoutAcpi) {
  constexpr char kNoAcpi[] = R"(address-space: I/O
  0000000000000000-000000000000ffff (prio 0, i/o): io
    0000000000000040-0000000000000043 (prio 0, i/o): pit
    0000000000000070-0000000000000071 (prio 0, i/o): rtc
)";
  EXPECT_EQ(ParseAcpiPmTimerPort(kNoAcpi).status().code(), absl::StatusCode::kNotFound);
  // The same name outside the I/O address space is not the timer.
  constexpr char kElsewhere[] = R"(address-space: memory
  0000000000000608-000000000000060b (prio 0, i/o): acpi-tmr
)";
  EXPECT_EQ(ParseAcpiPmTimerPort(kElsewhere).status().code(), absl::StatusCode::kNotFound);
}

TEST(ParseAcpiPmTimerPort, RejectsAMangledRegion) {
  constexpr char kBad[] = R"(address-space: I/O
      zzzz-000000000000060b (prio 0, i/o): acpi-tmr
)";
  EXPECT_EQ(ParseAcpiPmTimerPort(kBad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParseIoPortReadLong, ReadsCapturedReply) {
  absl::StatusOr<uint32_t> value = ParseIoPortReadLong("portl[0x0608] = 0x0002ac4f\r\n");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, 0x2ac4fu);
}

TEST(ParseIoPortReadLong, RejectsOtherReplies) {
  EXPECT_FALSE(ParseIoPortReadLong("invalid char in format: 'l'").ok());
  EXPECT_FALSE(ParseIoPortReadLong("portl[0x0608] = zz").ok());
  EXPECT_FALSE(ParseIoPortReadLong("").ok());
}

}  // namespace
}  // namespace tprd::backend

namespace tprd::backend {
namespace {

TEST(TprdPidOfGdbChardev, ReadsThePidOfTprdsOwnIdsOnly) {
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb-4242-7", "tprd-gdb-"), 4242);
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb-1-0", "tprd-gdb-"), 1);
  EXPECT_EQ(TprdPidOfGdbChardev("gdb", "tprd-gdb-"), std::nullopt);
  EXPECT_EQ(TprdPidOfGdbChardev("charserial0", "tprd-gdb-"), std::nullopt);
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb-", "tprd-gdb-"), std::nullopt);
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb-12", "tprd-gdb-"), std::nullopt);
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb--3", "tprd-gdb-"), std::nullopt);
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb-12-", "tprd-gdb-"), std::nullopt);
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb-0-1", "tprd-gdb-"), std::nullopt);
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb-12x-1", "tprd-gdb-"), std::nullopt);
  EXPECT_EQ(TprdPidOfGdbChardev("tprd-gdb-12-1x", "tprd-gdb-"), std::nullopt);
}

// Captured from QEMU 7.2 (Debian), `info trace-events apic_mem_*`, CRLF as libvirt returns it.
TEST(ParseTraceEventStates, ReadsCapturedReply) {
  auto events = ParseTraceEventStates("apic_mem_writel : state 0\r\napic_mem_readl : state 1\r\n");
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[0].name, "apic_mem_writel");
  EXPECT_FALSE((*events)[0].enabled);
  EXPECT_EQ((*events)[1].name, "apic_mem_readl");
  EXPECT_TRUE((*events)[1].enabled);
  auto none = ParseTraceEventStates("\r\n");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty()) << "no event matched the pattern";
}

TEST(ParseTraceEventStates, RejectsOtherReplies) {
  EXPECT_FALSE(ParseTraceEventStates("unknown command: 'info trace-events'").ok());
  EXPECT_FALSE(ParseTraceEventStates("apic_mem_readl : state 2").ok());
  EXPECT_FALSE(ParseTraceEventStates(" : state 0").ok());
}

}  // namespace
}  // namespace tprd::backend
