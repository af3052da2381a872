// ProcessMemory, the real LiveMemoryReader, over FakeLibvirtConnection: its RAM windows built
// from `info mtree -f` and `gpa2hva`, and its reads done with process_vm_readv on this test's
// own process, whose buffer stands in for QEMU's guest RAM. No QEMU.
#include "kvm-backend/process_memory.h"

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_libvirt_connection.h"

namespace tprd::backend {
namespace {

constexpr char kUuid[] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

// Guest physical 0-0x3fff: RAM then its ROM-mode shadow (one window), a device hole, RAM again,
// and RAM gpa2hva places elsewhere (not the low-RAM mapping: left out). Above 4 GiB: left out.
constexpr char kMtree[] = R"(FlatView #0
 AS "memory", root: system
 Root memory region: system
  0000000000000000-00000000000007ff (prio 0, ram): pc.ram
  0000000000000800-0000000000000fff (prio 0, rom): pc.ram @0000000000000800
  0000000000001000-0000000000001fff (prio 1, i/o): vga-lowmem
  0000000000002000-0000000000002fff (prio 0, ram): pc.ram @0000000000002000
  0000000000003000-0000000000003fff (prio 0, ram): pc.ram @0000000000003000
  0000000100000000-0000000100000fff (prio 0, ram): pc.ram @0000000000004000
)";

class ProcessMemoryTest : public ::testing::Test {
 protected:
  ProcessMemoryTest() : ram_(0x5000) {
    for (size_t i = 0; i < ram_.size(); ++i) ram_[i] = static_cast<uint8_t>(i * 7);
    libvirt_.AddDomain({"xp", kUuid, 3, LibvirtDomainState::kRunning, 0}, getpid());
    libvirt_.SetMonitorReply("info mtree -f", kMtree);
    libvirt_.SetMonitorHandler([this](const std::string&, const std::string& command,
                                      bool) -> absl::StatusOr<std::string> {
      absl::string_view text = command;
      uint64_t gpa = 0;
      if (!absl::ConsumePrefix(&text, "gpa2hva 0x") || !absl::SimpleHexAtoi(text, &gpa)) {
        return absl::InvalidArgumentError(command);
      }
      uint64_t hva = Hva(gpa);
      if (gpa == 0x3000) hva += 0x100000;  // a mapping of its own
      return absl::StrFormat("Host virtual address for 0x%x (pc.ram) is 0x%x\r\n", gpa, hva);
    });
  }

  uint64_t Hva(uint64_t gpa) const { return reinterpret_cast<uint64_t>(ram_.data()) + gpa; }

  std::vector<uint8_t> ram_;
  FakeLibvirtConnection libvirt_;
};

TEST_F(ProcessMemoryTest, WindowsAreThePcRamRangesOfTheLowMappingAdjacentOnesMerged) {
  QemuMonitor monitor(&libvirt_, kUuid);
  absl::StatusOr<std::unique_ptr<ProcessMemory>> memory = ProcessMemory::Create(getpid(), monitor);
  ASSERT_TRUE(memory.ok()) << memory.status();
  const std::vector<ProcessMemory::Window>& windows = (*memory)->windows();
  ASSERT_EQ(windows.size(), 2u);
  EXPECT_EQ(windows[0].start, 0u);
  EXPECT_EQ(windows[0].end, 0xfffu);
  EXPECT_EQ(windows[0].hva_of_start, Hva(0));
  EXPECT_EQ(windows[1].start, 0x2000u);
  EXPECT_EQ(windows[1].end, 0x2fffu);
  EXPECT_EQ(windows[1].hva_of_start, Hva(0x2000));
}

TEST_F(ProcessMemoryTest, OpenedReaderReadsInsideOneWindowAndRefusesTheRest) {
  absl::StatusOr<std::unique_ptr<LiveMemoryReader>> memory = OpenProcessMemory(&libvirt_, kUuid);
  ASSERT_TRUE(memory.ok()) << memory.status();
  std::vector<uint8_t> out(4);
  // Across the merged RAM / ROM-shadow boundary.
  absl::Status read = (*memory)->Read(0x7fe, absl::MakeSpan(out));
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(out, std::vector<uint8_t>(ram_.begin() + 0x7fe, ram_.begin() + 0x802));
  read = (*memory)->Read(0x2ffc, absl::MakeSpan(out));
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(out, std::vector<uint8_t>(ram_.begin() + 0x2ffc, ram_.begin() + 0x3000));
  // Into the hole, in the left-out range, wrapping around: the caller falls back to the gdbstub.
  EXPECT_TRUE(absl::IsOutOfRange((*memory)->Read(0xffe, absl::MakeSpan(out))));
  EXPECT_TRUE(absl::IsOutOfRange((*memory)->Read(0x3000, absl::MakeSpan(out))));
  EXPECT_TRUE(absl::IsOutOfRange((*memory)->Read(~uint64_t{0} - 1, absl::MakeSpan(out))));
  EXPECT_TRUE((*memory)->Read(0x1000, absl::Span<uint8_t>()).ok());
}

TEST(OpenProcessMemory, NeedsTheQemuPid) {
  FakeLibvirtConnection remote;  // libvirt names no PID (a remote libvirtd)
  remote.AddDomain({"xp", kUuid, 3, LibvirtDomainState::kRunning, 0});
  EXPECT_TRUE(absl::IsNotFound(OpenProcessMemory(&remote, kUuid).status()));
  EXPECT_TRUE(remote.monitor_log().empty());
}

}  // namespace
}  // namespace tprd::backend
