#include "daemon/engine/planner.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "daemon/engine/classifier.h"

namespace tprd::engine {
namespace {

#define TPR 0x80, 0x00, 0xFE, 0xFF

// Distinct handler addresses, so a call to the wrong one is visible.
HandlerTable TestHandlers() {
  HandlerTable handlers;
  handlers.set_tpr = 0x800E8100;
  handlers.set_tpr_eax = 0x800E8120;
  for (int r = 0; r < kGprCount; ++r) {
    if (static_cast<Gpr>(r) != Gpr::kEsp) handlers.get_tpr[r] = 0x800E8200 + 0x10 * r;
  }
  handlers.get_tpr_stack = 0x800E8300;
  handlers.and_tpr_zero = 0x800E8400;
  return handlers;
}

std::vector<uint8_t> Le32(uint32_t value) {
  return {static_cast<uint8_t>(value), static_cast<uint8_t>(value >> 8),
          static_cast<uint8_t>(value >> 16), static_cast<uint8_t>(value >> 24)};
}

std::vector<uint8_t> Concat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Plans from the classifier's view of `original`, as the engine does.
absl::StatusOr<std::vector<uint8_t>> PlanFromBytes(const std::vector<uint8_t>& original,
                                                   uint32_t address, const HandlerTable& handlers) {
  const Classification classification = Classify(original, address);
  const std::optional<Site> site = CandidateSite(classification, original, address);
  if (!site.has_value()) return absl::InvalidArgumentError("not patchable");
  return PlanReplacement(*site, handlers);
}

TEST(PlannerTest, MovEaxFromMoffsCallsGetTprEax) {
  const uint32_t address = 0x80010000;
  const auto plan = PlanFromBytes({0xA1, TPR}, address, TestHandlers());
  ASSERT_TRUE(plan.ok()) << plan.status();
  // rel32 = 0x800E8200 - (0x80010000 + 5) = 0x000D81FB
  EXPECT_EQ(*plan, (std::vector<uint8_t>{0xE8, 0xFB, 0x81, 0x0D, 0x00}));
}

TEST(PlannerTest, MovMoffsFromEaxCallsSetTprEax) {
  const uint32_t address = 0x80010000;
  const auto plan = PlanFromBytes({0xA3, TPR}, address, TestHandlers());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(*plan, Concat({0xE8}, Le32(0x800E8120 - (address + 5))));
}

TEST(PlannerTest, MovRegFromMemIsNopThenCallForEveryRegister) {
  const uint32_t address = 0x80020001;
  for (int r = 0; r < kGprCount; ++r) {
    if (static_cast<Gpr>(r) == Gpr::kEsp) continue;
    SCOPED_TRACE(std::string(GprName(static_cast<Gpr>(r))));
    const uint8_t modrm = static_cast<uint8_t>(0x05 | (r << 3));
    const auto plan = PlanFromBytes({0x8B, modrm, TPR}, address, TestHandlers());
    ASSERT_TRUE(plan.ok()) << plan.status();
    const uint32_t target = 0x800E8200 + 0x10 * r;
    EXPECT_EQ(*plan, Concat({0x90, 0xE8}, Le32(target - (address + 1 + 5))));
  }
}

TEST(PlannerTest, MovMemFromRegIsPushRegThenCallSetTprForEveryRegister) {
  const uint32_t address = 0x80020001;
  for (int r = 0; r < kGprCount; ++r) {
    if (static_cast<Gpr>(r) == Gpr::kEsp) continue;
    SCOPED_TRACE(std::string(GprName(static_cast<Gpr>(r))));
    const uint8_t modrm = static_cast<uint8_t>(0x05 | (r << 3));
    const auto plan = PlanFromBytes({0x89, modrm, TPR}, address, TestHandlers());
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(*plan,
              Concat({static_cast<uint8_t>(0x50 + r), 0xE8}, Le32(0x800E8100 - (address + 1 + 5))));
  }
}

TEST(PlannerTest, PushMemIsPushEaxThenCallGetTprStack) {
  const uint32_t address = 0x80030000;
  const auto plan = PlanFromBytes({0xFF, 0x35, TPR}, address, TestHandlers());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(*plan, Concat({0x50, 0xE8}, Le32(0x800E8300 - (address + 1 + 5))));
}

TEST(PlannerTest, MovMemFromImmIsPushImm32ThenCallSetTpr) {
  const uint32_t address = 0x80030000;
  // A small immediate still gets the 5-byte push imm32 (68), never 6A imm8: the length must
  // stay 10.
  const auto plan = PlanFromBytes({0xC7, 0x05, TPR, 0x41, 0, 0, 0}, address, TestHandlers());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(*plan, Concat(Concat({0x68}, Le32(0x41)),
                          Concat({0xE8}, Le32(0x800E8100 - (address + 5 + 5)))));
}

TEST(PlannerTest, AndMemZeroIsTwoByteNopThenCallAndTprZero) {
  // and dword [tpr], 0 is 7 bytes: the 2 spare bytes go before the call as one 2-byte nop
  // (66 90), as the 8B form's spare byte does (90), so the call returns to the next
  // instruction. rel32 = 0x800E8400 - (0x80030000 + 2 + 5) = 0x000B83F9.
  const uint32_t address = 0x80030000;
  const auto plan = PlanFromBytes({0x83, 0x25, TPR, 0x00}, address, TestHandlers());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(*plan, (std::vector<uint8_t>{0x66, 0x90, 0xE8, 0xF9, 0x83, 0x0B, 0x00}));
  // Another immediate is not planned at all: the classifier gives no site.
  EXPECT_FALSE(PlanFromBytes({0x83, 0x25, TPR, 0x0F}, address, TestHandlers()).ok());

  PlanRequest request{address, Form::kAndMemZero, Gpr::kEax, 0, 10};
  EXPECT_EQ(PlanReplacement(request, TestHandlers()).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.original_length = 7;
  HandlerTable none = TestHandlers();
  none.and_tpr_zero = 0;
  EXPECT_EQ(PlanReplacement(request, none).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(PlannerTest, BackwardCallWrapsModulo32Bits) {
  // Site above the blob: rel32 is negative.
  const uint32_t address = 0xF0000000;
  const auto plan = PlanFromBytes({0xA1, TPR}, address, TestHandlers());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(*plan, Concat({0xE8}, Le32(0x800E8200u - (address + 5))));
  // And a call across the top of the address space.
  HandlerTable low = TestHandlers();
  low.get_tpr[0] = 0x00000010;
  const auto wrapped = PlanFromBytes({0xA1, TPR}, 0xFFFFFFF0, low);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  EXPECT_EQ(*wrapped, Concat({0xE8}, Le32(0x10u - (0xFFFFFFF0u + 5))));
}

TEST(PlannerTest, ReplacementKeepsTheOriginalLengthAndReDecodes) {
  const std::vector<std::vector<uint8_t>> originals = {{0xA1, TPR},
                                                       {0xA3, TPR},
                                                       {0x8B, 0x3D, TPR},
                                                       {0x89, 0x1D, TPR},
                                                       {0xFF, 0x35, TPR},
                                                       {0xC7, 0x05, TPR, 0xFF, 0xFF, 0xFF, 0xFF},
                                                       {0x83, 0x25, TPR, 0x00}};
  for (const auto& original : originals) {
    const auto plan = PlanFromBytes(original, 0x80400000, TestHandlers());
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->size(), original.size());
    const Site site = *CandidateSite(Classify(original, 0x80400000), original, 0x80400000);
    PlanRequest request{site.address, site.form, site.reg, site.imm, site.original.size()};
    EXPECT_TRUE(VerifyReplacement(*plan, request, TestHandlers()).ok());
  }
}

TEST(PlannerTest, MissingHandlerIsAnError) {
  HandlerTable handlers = TestHandlers();
  handlers.get_tpr[static_cast<int>(Gpr::kEdi)] = 0;
  const auto plan = PlanFromBytes({0x8B, 0x3D, TPR}, 0x80010000, handlers);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(PlannerTest, WrongLengthAndEspAreErrors) {
  PlanRequest request{0x80010000, Form::kMovRegFromMem, Gpr::kEcx, 0, 7};
  EXPECT_EQ(PlanReplacement(request, TestHandlers()).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.original_length = 6;
  request.reg = Gpr::kEsp;
  EXPECT_EQ(PlanReplacement(request, TestHandlers()).status().code(),
            absl::StatusCode::kInvalidArgument);
  request.form = Form::kMovMemFromReg;
  EXPECT_EQ(PlanReplacement(request, TestHandlers()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PlannerTest, VerifyRejectsWrongSequences) {
  const HandlerTable handlers = TestHandlers();
  const uint32_t address = 0x80010000;
  PlanRequest push_reg{address, Form::kMovMemFromReg, Gpr::kEbx, 0, 6};
  const auto good = PlanReplacement(push_reg, handlers);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_TRUE(VerifyReplacement(*good, push_reg, handlers).ok());

  std::vector<uint8_t> wrong_push = *good;
  wrong_push[0] = 0x51;  // push ecx
  EXPECT_FALSE(VerifyReplacement(wrong_push, push_reg, handlers).ok());

  std::vector<uint8_t> wrong_target = *good;
  wrong_target[2] ^= 0x01;
  EXPECT_FALSE(VerifyReplacement(wrong_target, push_reg, handlers).ok());

  std::vector<uint8_t> jmp = *good;
  jmp[1] = 0xE9;  // jmp rel32, not call
  EXPECT_FALSE(VerifyReplacement(jmp, push_reg, handlers).ok());

  EXPECT_FALSE(VerifyReplacement(absl::MakeConstSpan(*good).first(5), push_reg, handlers).ok());

  PlanRequest nop_form{address, Form::kMovRegFromMem, Gpr::kEbx, 0, 6};
  EXPECT_FALSE(VerifyReplacement(*good, nop_form, handlers).ok());  // push, not nop

  PlanRequest imm{address, Form::kMovMemFromImm, Gpr::kEax, 0x10, 10};
  const auto imm_plan = PlanReplacement(imm, handlers);
  ASSERT_TRUE(imm_plan.ok()) << imm_plan.status();
  imm.imm = 0x11;
  EXPECT_FALSE(VerifyReplacement(*imm_plan, imm, handlers).ok());

  // and_mem_zero: exactly one 2-byte nop before the call, not two 1-byte ones, not the
  // original and, not another handler.
  PlanRequest and_zero{address, Form::kAndMemZero, Gpr::kEax, 0, 7};
  const auto and_plan = PlanReplacement(and_zero, handlers);
  ASSERT_TRUE(and_plan.ok()) << and_plan.status();
  EXPECT_TRUE(VerifyReplacement(*and_plan, and_zero, handlers).ok());
  std::vector<uint8_t> two_nops = *and_plan;
  two_nops[0] = 0x90;
  EXPECT_FALSE(VerifyReplacement(two_nops, and_zero, handlers).ok());
  EXPECT_FALSE(
      VerifyReplacement(std::vector<uint8_t>{0x83, 0x25, TPR, 0x00}, and_zero, handlers).ok());
  HandlerTable moved = handlers;
  moved.and_tpr_zero += 0x10;
  EXPECT_FALSE(VerifyReplacement(*and_plan, and_zero, moved).ok());
  PlanRequest as_set_tpr{address, Form::kMovMemFromImm, Gpr::kEax, 0, 7};
  EXPECT_FALSE(VerifyReplacement(*and_plan, as_set_tpr, handlers).ok());

  // The original bytes are not a replacement.
  PlanRequest a1{address, Form::kMovEaxFromMoffs, Gpr::kEax, 0, 5};
  EXPECT_FALSE(VerifyReplacement(std::vector<uint8_t>{0xA1, TPR}, a1, handlers).ok());
}

TEST(PlannerTest, HandlerForMapsEveryForm) {
  const HandlerTable handlers = TestHandlers();
  EXPECT_EQ(HandlerFor(handlers, Form::kMovEaxFromMoffs, Gpr::kEax), 0x800E8200u);
  EXPECT_EQ(HandlerFor(handlers, Form::kMovMoffsFromEax, Gpr::kEax), 0x800E8120u);
  EXPECT_EQ(HandlerFor(handlers, Form::kMovRegFromMem, Gpr::kEsi), 0x800E8260u);
  EXPECT_EQ(HandlerFor(handlers, Form::kMovRegFromMem, Gpr::kEsp), 0u);
  EXPECT_EQ(HandlerFor(handlers, Form::kMovMemFromReg, Gpr::kEdx), 0x800E8100u);
  EXPECT_EQ(HandlerFor(handlers, Form::kMovMemFromImm, Gpr::kEax), 0x800E8100u);
  EXPECT_EQ(HandlerFor(handlers, Form::kPushMem, Gpr::kEax), 0x800E8300u);
  EXPECT_EQ(HandlerFor(handlers, Form::kAndMemZero, Gpr::kEax), 0x800E8400u);
}

}  // namespace
}  // namespace tprd::engine
