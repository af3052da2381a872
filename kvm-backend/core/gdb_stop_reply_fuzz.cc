// Stop replies come from the peer: parsing any bytes must return a value or an error, never
// crash. The target description parser sees peer data too and is fuzzed alongside.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "kvm-backend/core/gdb_registers.h"
#include "kvm-backend/core/gdb_stop_reply.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<tprd::backend::GdbStopReply> stop = tprd::backend::ParseGdbStopReply(input);
  if (stop.ok() && stop->thread) (void)stop->thread->ToString(true);
  (void)tprd::backend::ParseGdbThreadId(input);
  (void)tprd::backend::FindGdbXmlIncludes(input);
  std::string document(input);
  absl::StatusOr<tprd::backend::GdbRegisterLayout> layout =
      tprd::backend::GdbRegisterLayout::FromTargetXml({&document, 1});
  if (layout.ok()) (void)layout->DecodeI386(input);
  return 0;
}
