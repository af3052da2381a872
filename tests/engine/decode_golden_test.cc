// Golden files: tests/engine/golden/*.json each hold one decode input and the exact JSON
// `tprctl decode --json` prints for it:
//   {"input": {"bytes": "a18000feff", "address": "0x80001000", "tpr": "0xfffe0080",
//              "blob_va": "0x800e8000"},
//    "expected": { ...DecodeReportJson... }}
// To regenerate after an intended change: TPRD_UPDATE_GOLDEN=1 ./decode_golden_test, then
// review the diff (git diff tests/engine/golden) before committing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/engine/blob.h"
#include "daemon/engine/decode_report.h"
#include "daemon/engine/hex.h"

namespace tprd::engine {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

fs::path GoldenDir() {
  if (const char* dir = std::getenv("TPRD_GOLDEN_DIR")) return dir;
  return fs::path(__FILE__).parent_path() / "golden";
}

std::vector<fs::path> GoldenFiles() {
  std::vector<fs::path> files;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(GoldenDir(), error)) {
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

uint32_t ParseHex32(const Json& value) {
  return static_cast<uint32_t>(std::stoul(value.get<std::string>(), nullptr, 16));
}

std::vector<uint8_t> ParseHexBytes(const std::string& hex) {
  absl::StatusOr<std::vector<uint8_t>> bytes = HexDecode(hex);
  EXPECT_TRUE(bytes.ok()) << bytes.status() << " in \"" << hex << "\"";
  return bytes.ok() ? *bytes : std::vector<uint8_t>();
}

TEST(DecodeGoldenTest, GoldenFilesExist) {
  EXPECT_GE(GoldenFiles().size(), 10u) << "no golden files found in " << GoldenDir();
}

TEST(DecodeGoldenTest, EveryGoldenFileMatches) {
  const bool update = std::getenv("TPRD_UPDATE_GOLDEN") != nullptr;
  for (const fs::path& path : GoldenFiles()) {
    SCOPED_TRACE(path.string());
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    Json golden = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(golden.is_discarded()) << "not JSON";
    ASSERT_TRUE(golden.contains("input") && golden["input"].contains("bytes") &&
                golden["input"].contains("address"))
        << "missing input.bytes / input.address";
    const Json& input = golden["input"];
    const uint32_t tpr = input.contains("tpr") ? ParseHex32(input["tpr"]) : kDefaultTprVa;
    const uint32_t blob_va =
        input.contains("blob_va") ? ParseHex32(input["blob_va"]) : kDefaultBlobVa;
    const absl::StatusOr<HandlerTable> handlers = HandlerTableForBlob(blob_va);
    ASSERT_TRUE(handlers.ok()) << handlers.status();
    const DecodeReport report = BuildDecodeReport(ParseHexBytes(input["bytes"].get<std::string>()),
                                                  ParseHex32(input["address"]), tpr, *handlers);
    const Json actual = Json::parse(DecodeReportJson(report));
    if (update) {
      golden["expected"] = actual;
      std::ofstream(path) << golden.dump(2) << "\n";
      continue;
    }
    ASSERT_TRUE(golden.contains("expected")) << "no expected output; run with TPRD_UPDATE_GOLDEN=1";
    EXPECT_EQ(actual.dump(2), golden["expected"].dump(2));
  }
}

}  // namespace
}  // namespace tprd::engine
