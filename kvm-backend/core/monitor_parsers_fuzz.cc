// Fuzzes every monitor parser with the same bytes: none may crash, hang or leak on any input.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kvm-backend/core/monitor_parsers.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)tprd::backend::ParseLapicTpr(text);
  (void)tprd::backend::ParseMtreeFlat(text);
  (void)tprd::backend::ParseGpa2Hva(text);
  (void)tprd::backend::CheckGdbserverReply(text);
  (void)tprd::backend::ParseQueryCpusFast(text);
  (void)tprd::backend::ParseQomGetBool(text);
  (void)tprd::backend::ParseQueryStatus(text);
  (void)tprd::backend::ParseQueryKvmEnabled(text);
  (void)tprd::backend::QomGetCommand(text, text);
  return 0;
}
