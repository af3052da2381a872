// How tprctl prints what tprd answers: the words for the API's enums, one-line JSON documents
// (--json) and the text forms (tables, the status block, event lines). Scripts parse the JSON:
// its keys and values are an interface (docs/usage.md).
#ifndef TPRD_CLI_DAEMON_OUTPUT_H_
#define TPRD_CLI_DAEMON_OUTPUT_H_

#include <algorithm>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "tprd/v1/tprd.pb.h"

namespace tprd::cli {

using Json = nlohmann::ordered_json;

std::string StrategyWord(tprd::v1::Strategy value);
std::string DomainStateWord(tprd::v1::DomainState value);
std::string FormWord(tprd::v1::Form value);
std::string SiteStateWord(tprd::v1::SiteState value);
std::string EventKindWord(tprd::v1::Event::Kind value);
// JSON null for an empty text.
Json OrNull(const std::string& text);
// "-" for an empty text, in the text forms.
std::string OrDash(const std::string& text);
std::string Address(uint32_t address);

// The recorded intent: its strategy word ("auto", "mmio", ...), "invalid" when the metadata
// holds one tprd refuses, "-" when none.
std::string IntentWord(const tprd::v1::DomainSummary& summary);
std::string IntentWord(const tprd::v1::DomainStatus& status);
// {"strategy", "discovery_budget_ms"} or null.
Json IntentJson(const tprd::v1::DomainSummary& summary);
Json IntentJson(const tprd::v1::DomainStatus& status);
// tprctl's own JSON, not protobuf's JSON mapping of the message: its keys, enum words, nulls and
// hex bytes are an interface scripts rely on (docs/usage.md), free of the proto's evolution.
Json SiteJson(const tprd::v1::Site& site);
Json StatusJson(const tprd::v1::DomainStatus& status);
Json EventJson(const tprd::v1::Event& event);
// One document per line.
void PrintJson(const Json& document, std::ostream& out);

// Columns padded to their widest cell; the last column is left ragged.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void Print(std::ostream& out) const {
    std::vector<size_t> widths(rows_[0].size(), 0);
    for (const auto& row : rows_) {
      for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
        widths[i] = std::max(widths[i], row[i].size());
      }
    }
    for (const auto& row : rows_) {
      std::string line;
      for (size_t i = 0; i < row.size(); ++i) {
        line += row[i];
        if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
      }
      out << line << "\n";
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

void PrintSites(const google::protobuf::RepeatedPtrField<tprd::v1::Site>& sites, std::ostream& out);
void PrintStatus(const tprd::v1::DomainStatus& status, std::ostream& out);
void PrintEventLine(const tprd::v1::Event& event, std::ostream& out);

}  // namespace tprd::cli

#endif  // TPRD_CLI_DAEMON_OUTPUT_H_
