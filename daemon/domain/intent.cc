#include "daemon/domain/intent.h"

#include <charconv>
#include <optional>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace tprd::daemon {
namespace {

constexpr char kElement[] = "intent";

// Hostile text is quoted escaped and short, never whole.
std::string Excerpt(std::string_view text) {
  constexpr size_t kMax = 40;
  return absl::StrCat("'", absl::CHexEscape(std::string(text.substr(0, kMax))),
                      text.size() > kMax ? "...'" : "'");
}

absl::Status Refused(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(
      "tprd's intent metadata (namespace ", kIntentNamespace, ") is not valid: ", why,
      "; expected <intent strategy=\"auto|mmio|cr8|exact\" [discovery_budget_ms=\"N\"]/> "
      "(docs/usage.md); fix it with virsh edit, or remove it with tprctl disable"));
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == ':';
}

// A cursor over the text; every read is bounds-checked.
class Reader {
 public:
  explicit Reader(std::string_view text) : text_(text) {}
  void SkipSpace() {
    while (pos_ < text_.size() && IsSpace(text_[pos_])) ++pos_;
  }
  bool AtEnd() const { return pos_ >= text_.size(); }
  bool Take(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) return false;
    pos_ += literal.size();
    return true;
  }
  std::string_view Name() {
    const size_t start = pos_;
    while (pos_ < text_.size() && IsNameChar(text_[pos_])) ++pos_;
    return text_.substr(start, pos_ - start);
  }
  // A quoted attribute value; nullopt when unquoted or unterminated.
  std::optional<std::string_view> Quoted() {
    if (AtEnd() || (text_[pos_] != '"' && text_[pos_] != '\'')) return std::nullopt;
    const char quote = text_[pos_];
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) return std::nullopt;
    std::string_view value = text_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return value;
  }
  std::string_view Rest() const { return text_.substr(std::min(pos_, text_.size())); }

 private:
  std::string_view text_;
  size_t pos_ = 0;
};

// The element's local name: `intent` or `prefix:intent`.
bool IsIntentName(std::string_view name) {
  const size_t colon = name.find(':');
  if (colon == std::string_view::npos) return name == kElement;
  return colon > 0 && name.substr(colon + 1) == kElement &&
         name.substr(0, colon).find(':') == std::string_view::npos;
}

absl::StatusOr<RequestedStrategy> StrategyFromWord(std::string_view word) {
  if (word == "auto") return RequestedStrategy::kAuto;
  if (word == "mmio") return RequestedStrategy::kMmio;
  if (word == "cr8") return RequestedStrategy::kCr8;
  if (word == "exact") return RequestedStrategy::kExact;
  return Refused(absl::StrCat("strategy ", Excerpt(word), " is none of auto, mmio, cr8, exact"));
}

absl::StatusOr<absl::Duration> BudgetFromText(std::string_view text) {
  uint32_t ms = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), ms);
  if (text.empty() || text.size() > 10 || error != std::errc() ||
      end != text.data() + text.size() || ms == 0 || ms > kMaxIntentBudgetMs) {
    return Refused(absl::StrCat("discovery_budget_ms ", Excerpt(text),
                                " is not a whole number of milliseconds from 1 to ",
                                kMaxIntentBudgetMs));
  }
  return absl::Milliseconds(ms);
}

}  // namespace

const char* RequestedStrategyWord(RequestedStrategy strategy) {
  switch (strategy) {
    case RequestedStrategy::kAuto:
      return "auto";
    case RequestedStrategy::kMmio:
      return "mmio";
    case RequestedStrategy::kCr8:
      return "cr8";
    case RequestedStrategy::kExact:
      return "exact";
  }
  return "auto";
}

std::string IntentToXml(const Intent& intent) {
  std::string xml =
      absl::StrCat("<", kElement, " strategy=\"", RequestedStrategyWord(intent.strategy), "\"");
  if (intent.discovery_budget > absl::ZeroDuration()) {
    absl::StrAppend(&xml, " discovery_budget_ms=\"",
                    absl::ToInt64Milliseconds(intent.discovery_budget), "\"");
  }
  absl::StrAppend(&xml, "/>");
  return xml;
}

absl::StatusOr<Intent> ParseIntentXml(std::string_view xml) {
  if (xml.size() > kMaxIntentXml) {
    return Refused(absl::StrCat("it is ", xml.size(), " bytes long (at most ", kMaxIntentXml, ")"));
  }
  Reader in(xml);
  in.SkipSpace();
  if (!in.Take("<"))
    return Refused(absl::StrCat("it does not start with an element: ", Excerpt(xml)));
  const std::string_view name = in.Name();
  if (!IsIntentName(name)) {
    return Refused(absl::StrCat("its element is ", Excerpt(name), ", not intent"));
  }
  Intent intent;
  bool have_strategy = false;
  std::set<std::string_view> seen;
  while (true) {
    const bool spaced = [&] {
      const size_t before = in.Rest().size();
      in.SkipSpace();
      return in.Rest().size() != before;
    }();
    if (in.Take("/>")) break;
    if (in.Take(">")) {
      // Only an end tag may follow: the element carries everything in its attributes.
      in.SkipSpace();
      if (!in.Take("</") || in.Name() != name) {
        return Refused(absl::StrCat("the element must be empty, found ", Excerpt(in.Rest())));
      }
      in.SkipSpace();
      if (!in.Take(">")) return Refused("its end tag is not closed");
      break;
    }
    if (in.AtEnd()) return Refused("the element is not closed");
    const std::string_view attribute = in.Name();
    if (attribute.empty() || !spaced) {
      return Refused(absl::StrCat("unexpected text in the element: ", Excerpt(in.Rest())));
    }
    in.SkipSpace();
    if (!in.Take("="))
      return Refused(absl::StrCat("attribute ", Excerpt(attribute), " has no value"));
    in.SkipSpace();
    std::optional<std::string_view> value = in.Quoted();
    if (!value) {
      return Refused(absl::StrCat("attribute ", Excerpt(attribute), " has no quoted value"));
    }
    if (!seen.insert(attribute).second) {
      return Refused(absl::StrCat("attribute ", Excerpt(attribute), " is given twice"));
    }
    // Namespace declarations: libvirt keeps the ones written by hand.
    if (attribute == "xmlns" || attribute.substr(0, 6) == "xmlns:") continue;
    if (attribute == "strategy") {
      absl::StatusOr<RequestedStrategy> strategy = StrategyFromWord(*value);
      if (!strategy.ok()) return strategy.status();
      intent.strategy = *strategy;
      have_strategy = true;
    } else if (attribute == "discovery_budget_ms") {
      absl::StatusOr<absl::Duration> budget = BudgetFromText(*value);
      if (!budget.ok()) return budget.status();
      intent.discovery_budget = *budget;
    } else {
      return Refused(absl::StrCat("unknown attribute ", Excerpt(attribute)));
    }
  }
  in.SkipSpace();
  if (!in.AtEnd()) {
    return Refused(absl::StrCat("text follows the element: ", Excerpt(in.Rest())));
  }
  if (!have_strategy) return Refused("it has no strategy attribute");
  return intent;
}

}  // namespace tprd::daemon
