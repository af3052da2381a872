#include "daemon/engine/site.h"

#include <array>

namespace tprd::engine {
namespace {

constexpr std::array<std::pair<Form, std::string_view>, 7> kFormNames = {{
    {Form::kMovEaxFromMoffs, "mov_eax_from_moffs"},
    {Form::kMovMoffsFromEax, "mov_moffs_from_eax"},
    {Form::kMovRegFromMem, "mov_reg_from_mem"},
    {Form::kMovMemFromReg, "mov_mem_from_reg"},
    {Form::kMovMemFromImm, "mov_mem_from_imm"},
    {Form::kPushMem, "push_mem"},
    {Form::kAndMemZero, "and_mem_zero"},
}};

constexpr std::array<std::string_view, kGprCount> kGprNames = {"eax", "ecx", "edx", "ebx",
                                                               "esp", "ebp", "esi", "edi"};

}  // namespace

std::string_view FormName(Form form) {
  for (const auto& [f, name] : kFormNames) {
    if (f == form) return name;
  }
  return "unknown";
}

std::optional<Form> FormFromName(std::string_view name) {
  for (const auto& [f, n] : kFormNames) {
    if (n == name) return f;
  }
  return std::nullopt;
}

std::string_view GprName(Gpr reg) {
  const auto index = static_cast<size_t>(reg);
  return index < kGprNames.size() ? kGprNames[index] : "unknown";
}

std::string_view SiteStateName(SiteState state) {
  switch (state) {
    case SiteState::kCandidate:
      return "candidate";
    case SiteState::kPending:
      return "pending";
    case SiteState::kApplied:
      return "applied";
    case SiteState::kRolledBack:
      return "rolled_back";
  }
  return "unknown";
}

std::string_view StrategyName(Strategy strategy) {
  switch (strategy) {
    case Strategy::kExact:
      return "exact";
    case Strategy::kMmio:
      return "mmio";
    case Strategy::kCr8:
      return "cr8";
  }
  return "unknown";
}

std::optional<Strategy> StrategyFromName(std::string_view name) {
  for (Strategy s : {Strategy::kExact, Strategy::kMmio, Strategy::kCr8}) {
    if (StrategyName(s) == name) return s;
  }
  return std::nullopt;
}

std::string_view DiscoveryName(Discovery discovery) {
  return discovery == Discovery::kWatchpoint ? "watchpoint" : "breakpoints";
}

std::optional<Discovery> DiscoveryFromName(std::string_view name) {
  if (name == "breakpoints") return Discovery::kBreakpoints;
  if (name == "watchpoint") return Discovery::kWatchpoint;
  return std::nullopt;
}

}  // namespace tprd::engine
