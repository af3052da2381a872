// The commands a domain's actor runs, and the one table of when each is legal
// (shared/design/style.md, Firecracker: a command is checked against the state before it runs).
//
// DomainActor consults the table at two moments, each in one place, because the two inputs are
// known at different times:
//  - when a command is queued (DomainActor::Admit), against the actor's phase: a command queued
//    before Detach() still runs after it, so the phase must not be looked at again later;
//  - when the actor takes it off the queue, just before its body (DomainActor::StartGate),
//    against the domain's state then: a lifecycle event queued ahead of it may have changed it.
// Command bodies check no state of their own.
#ifndef TPRD_DAEMON_ACTOR_ACTOR_COMMAND_H_
#define TPRD_DAEMON_ACTOR_ACTOR_COMMAND_H_

#include <array>
#include <cstddef>
#include <cstdint>

#include "daemon/domain/domain_state.h"

namespace tprd::daemon {

enum class ActorCommand : uint8_t {
  kEnable,
  kRollback,
  kScan,
  kAdopt,
  kDetach,
  kDisable,    // forget the operator's intent, then roll back every site
  kLifecycle,  // a libvirt lifecycle event, queued from the hypervisor's event thread
};
inline constexpr int kActorCommandCount = static_cast<int>(ActorCommand::kLifecycle) + 1;

// Whether the actor takes new commands.
enum class ActorPhase : uint8_t {
  kOpen,
  kClosing,   // Detach() began: tprd lets go of the domain, only what the table allows is taken
  kStopping,  // the actor is being destroyed: its thread is ending, nothing is taken
};

struct ActorCommandRule {
  ActorCommand command;
  const char* name;  // in busy_with and in error messages
  // An operator's change to the guest: it is busy_with from when it is queued until it is
  // answered, and a second claim meanwhile is refused as busy rather than queued behind it.
  bool claims_domain;
  bool accepted_while_closing;
  std::array<bool, kDomainStateCount> runs_in;  // indexed by DomainState
};

// Adopt claims nothing: it runs at daemon start and on reconnect, and an operator's enable
// arriving meanwhile queues behind it. While closing, only the detach itself is taken, and
// lifecycle events, which keep the snapshot true until the actor stops. Detach and lifecycle
// events run on a gone domain: there is a session to drop or a state to update, no guest to use.
// Disable runs on a gone domain too: it forgets the intent, and has no guest to roll back.
// clang-format off
inline constexpr std::array<ActorCommandRule, kActorCommandCount> kActorCommandRules = {{
    //                                      claims  accepted  runs when the domain is: unpatched,
    // command                  name        domain  closing   patching, patched, away, gone
    {ActorCommand::kEnable,    "enable",    true,   false,    {true, true, true, true, false}},
    {ActorCommand::kRollback,  "rollback",  true,   false,    {true, true, true, true, false}},
    {ActorCommand::kScan,      "scan",      false,  false,    {true, true, true, true, false}},
    {ActorCommand::kAdopt,     "adopt",     false,  false,    {true, true, true, true, false}},
    {ActorCommand::kDetach,    "detach",    false,  true,     {true, true, true, true, true}},
    {ActorCommand::kDisable,   "disable",   true,   false,    {true, true, true, true, true}},
    {ActorCommand::kLifecycle, "lifecycle", false,  true,     {true, true, true, true, true}},
}};
// clang-format on

constexpr bool ActorCommandRulesInEnumOrder() {
  for (size_t i = 0; i < kActorCommandRules.size(); ++i) {
    if (static_cast<size_t>(kActorCommandRules[i].command) != i) return false;
  }
  return true;
}
static_assert(ActorCommandRulesInEnumOrder(), "RuleFor indexes kActorCommandRules by command");

constexpr const ActorCommandRule& RuleFor(ActorCommand command) {
  return kActorCommandRules[static_cast<size_t>(command)];
}

constexpr const char* ActorCommandName(ActorCommand command) { return RuleFor(command).name; }

constexpr bool AcceptedIn(ActorCommand command, ActorPhase phase) {
  switch (phase) {
    case ActorPhase::kOpen:
      return true;
    case ActorPhase::kClosing:
      return RuleFor(command).accepted_while_closing;
    case ActorPhase::kStopping:
      return false;
  }
  return false;
}

constexpr bool RunsIn(ActorCommand command, DomainState state) {
  return RuleFor(command).runs_in[static_cast<size_t>(state)];
}

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_ACTOR_ACTOR_COMMAND_H_
