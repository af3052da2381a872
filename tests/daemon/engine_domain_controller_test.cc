// EngineDomainController's look for tprd's blob without stopping the guest, over a fake
// LiveMemoryReader (EngineControllerOptions::open_live_memory) and FakeLibvirtConnection. No
// QEMU: the controller is never asked to attach.
#include "daemon/domain/engine_domain_controller.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/placement.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_libvirt_connection.h"
#include "tests/fakes/fake_live_memory_reader.h"

namespace tprd::daemon {
namespace {

using backend::FakeLiveMemoryReader;
using backend::LiveMemoryRead;
using ::testing::IsEmpty;

constexpr char kUuid[] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
constexpr size_t kWindowBytes = engine::kLegacyWindowEnd - engine::kLegacyWindowFirst;

class EngineDomainControllerTest : public ::testing::Test {
 protected:
  EngineDomainControllerTest() : window_(kWindowBytes) {
    libvirt_.AddDomain({"xp", kUuid, 3, backend::LibvirtDomainState::kRunning, 0});
  }

  void PutMagic(uint32_t pa) {
    const uint32_t magic = TPRD_BLOB_MAGIC;
    std::memcpy(window_.data() + (pa - engine::kLegacyWindowFirst), &magic, sizeof(magic));
  }

  // A controller whose reader serves window_, or fails with `read_error`.
  std::unique_ptr<EngineDomainController> Controller(absl::Status read_error = absl::OkStatus()) {
    EngineControllerOptions options;
    options.open_live_memory =
        [this, read_error](
            backend::LibvirtConnection*,
            const std::string& uuid) -> absl::StatusOr<std::unique_ptr<backend::LiveMemoryReader>> {
      opened_.push_back(uuid);
      return std::make_unique<FakeLiveMemoryReader>(engine::kLegacyWindowFirst, window_, read_error,
                                                    &reads_);
    };
    return std::make_unique<EngineDomainController>(&libvirt_, DomainInfo{"xp", kUuid, 3, true},
                                                    nullptr, options);
  }

  backend::FakeLibvirtConnection libvirt_;
  std::vector<uint8_t> window_;
  std::vector<std::string> opened_;
  std::vector<LiveMemoryRead> reads_;
};

// auto is mmio on every guest, with cr8legacy too: cr8 needs tprd attached to keep unpatched
// readers correct, which a memory snapshot, a save or a migration does not keep.
TEST(ResolveRequestedStrategyTest, AutoIsMmioAndTheNamedStrategiesAreThemselves) {
  EXPECT_EQ(ResolveRequestedStrategy(RequestedStrategy::kAuto), engine::Strategy::kMmio);
  EXPECT_EQ(ResolveRequestedStrategy(RequestedStrategy::kMmio), engine::Strategy::kMmio);
  EXPECT_EQ(ResolveRequestedStrategy(RequestedStrategy::kCr8), engine::Strategy::kCr8);
  EXPECT_EQ(ResolveRequestedStrategy(RequestedStrategy::kExact), engine::Strategy::kExact);
}

// Only tprd's own trouble is an error in the status; the host's pause is the host's.
TEST(ControllerEventKindOfTest, TheHostsPauseIsANoticeAndAWarningAnError) {
  EXPECT_EQ(ControllerEventKindOf(engine::ManagerEvent::Kind::kHostPaused),
            ControllerEvent::Kind::kNotice);
  EXPECT_EQ(ControllerEventKindOf(engine::ManagerEvent::Kind::kWarning),
            ControllerEvent::Kind::kError);
  EXPECT_EQ(ControllerEventKindOf(engine::ManagerEvent::Kind::kSitePatched),
            ControllerEvent::Kind::kSiteChanged);
}

TEST_F(EngineDomainControllerTest, WindowWithTheBlobMagicAtAPageStartHoldsTheBlob) {
  PutMagic(engine::kLegacyWindowFirst + 0x10000);
  absl::StatusOr<bool> present = Controller()->BlobPresentWithoutStopping();
  ASSERT_TRUE(present.ok()) << present.status();
  EXPECT_TRUE(*present);
  EXPECT_EQ(opened_, std::vector<std::string>{kUuid});
  // The whole legacy window, in one read.
  ASSERT_EQ(reads_.size(), 1u);
  EXPECT_EQ(reads_[0].gpa, engine::kLegacyWindowFirst);
  EXPECT_EQ(reads_[0].size, kWindowBytes);
}

TEST_F(EngineDomainControllerTest, WindowWithoutTheMagicAtAPageStartHoldsNoBlob) {
  PutMagic(engine::kLegacyWindowFirst + 0x10004);  // inside a page: not a blob
  absl::StatusOr<bool> present = Controller()->BlobPresentWithoutStopping();
  ASSERT_TRUE(present.ok()) << present.status();
  EXPECT_FALSE(*present);
}

TEST_F(EngineDomainControllerTest, ReadErrorIsReturned) {
  PutMagic(engine::kLegacyWindowFirst);
  absl::StatusOr<bool> present =
      Controller(absl::PermissionDeniedError("process_vm_readv: not root"))
          ->BlobPresentWithoutStopping();
  EXPECT_TRUE(absl::IsPermissionDenied(present.status())) << present.status();
}

TEST_F(EngineDomainControllerTest, ReaderThatDoesNotOpenIsAnError) {
  EngineControllerOptions options;
  options.open_live_memory =
      [](backend::LibvirtConnection*,
         const std::string& uuid) -> absl::StatusOr<std::unique_ptr<backend::LiveMemoryReader>> {
    return absl::NotFoundError(absl::StrCat("no QEMU PID for ", uuid));
  };
  EngineDomainController controller(&libvirt_, DomainInfo{"xp", kUuid, 3, true}, nullptr, options);
  EXPECT_TRUE(absl::IsNotFound(controller.BlobPresentWithoutStopping().status()));
}

// An unpatched guest is never stopped: no gdbstub is started, no monitor command is sent.
TEST_F(EngineDomainControllerTest, AdoptWithoutABlobDoesNotAttach) {
  absl::StatusOr<bool> adopted = Controller()->Adopt(std::nullopt);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_FALSE(*adopted);
  EXPECT_THAT(libvirt_.monitor_log(), IsEmpty());
}

}  // namespace
}  // namespace tprd::daemon
