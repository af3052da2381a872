#include "kvm-backend/core/gdb_registers.h"

#include <algorithm>
#include <optional>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kvm-backend/core/gdb_packet.h"

namespace tprd::backend {
namespace {

// Limits that no real target comes near; they keep a hostile description from costing much.
constexpr int kMaxRegisters = 2048;
constexpr int kMaxRegisterBits = 4096;
constexpr int kMaxRegnum = 65535;

std::string WithoutComments(std::string_view xml) {
  std::string out;
  size_t pos = 0;
  while (pos < xml.size()) {
    size_t open = xml.find("<!--", pos);
    if (open == std::string_view::npos) break;
    out.append(xml.substr(pos, open - pos));
    size_t close = xml.find("-->", open + 4);
    if (close == std::string_view::npos) return out;  // an unterminated comment runs to the end
    pos = close + 3;
  }
  if (pos < xml.size()) out.append(xml.substr(pos));
  return out;
}

// Calls `visit(tag_text)` for every element `<name ...>` (text between `<name` and `>`).
template <typename Visit>
void ForEachElement(std::string_view xml, std::string_view name, Visit visit) {
  std::string opener = absl::StrCat("<", std::string(name));
  size_t pos = 0;
  while ((pos = xml.find(opener, pos)) != std::string_view::npos) {
    size_t after = pos + opener.size();
    if (after >= xml.size()) return;
    char next = xml[after];
    if (next != ' ' && next != '\t' && next != '\n' && next != '\r' && next != '/' && next != '>') {
      pos = after;  // `<register`, not `<reg`
      continue;
    }
    size_t close = xml.find('>', after);
    if (close == std::string_view::npos) return;
    visit(xml.substr(after, close - after));
    pos = close + 1;
  }
}

std::optional<std::string_view> Attribute(std::string_view tag, std::string_view name) {
  size_t pos = 0;
  while ((pos = tag.find(name, pos)) != std::string_view::npos) {
    bool starts_word = pos == 0 || tag[pos - 1] == ' ' || tag[pos - 1] == '\t' ||
                       tag[pos - 1] == '\n' || tag[pos - 1] == '\r';
    size_t eq = pos + name.size();
    while (eq < tag.size() && tag[eq] == ' ') ++eq;
    if (!starts_word || eq >= tag.size() || tag[eq] != '=') {
      pos += name.size();
      continue;
    }
    size_t quote = eq + 1;
    while (quote < tag.size() && tag[quote] == ' ') ++quote;
    if (quote >= tag.size() || (tag[quote] != '"' && tag[quote] != '\'')) return std::nullopt;
    size_t end = tag.find(tag[quote], quote + 1);
    if (end == std::string_view::npos) return std::nullopt;
    return tag.substr(quote + 1, end - quote - 1);
  }
  return std::nullopt;
}

std::optional<int> SmallInt(std::optional<std::string_view> text, int max) {
  int value = 0;
  if (!text || !absl::SimpleAtoi(absl::string_view(text->data(), text->size()), &value) ||
      value < 0 || value > max) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

std::vector<std::string> FindGdbXmlIncludes(std::string_view xml) {
  std::vector<std::string> hrefs;
  std::string text = WithoutComments(xml);
  ForEachElement(text, "xi:include", [&](std::string_view tag) {
    if (std::optional<std::string_view> href = Attribute(tag, "href"); href && !href->empty()) {
      hrefs.emplace_back(*href);
    }
  });
  return hrefs;
}

absl::StatusOr<GdbRegisterLayout> GdbRegisterLayout::FromTargetXml(
    absl::Span<const std::string> documents) {
  GdbRegisterLayout layout;
  absl::Status error;
  int next_regnum = 0;
  for (const std::string& document : documents) {
    std::string text = WithoutComments(document);
    ForEachElement(text, "reg", [&](std::string_view tag) {
      if (!error.ok()) return;
      std::optional<std::string_view> name = Attribute(tag, "name");
      std::optional<int> bits = SmallInt(Attribute(tag, "bitsize"), kMaxRegisterBits);
      std::optional<std::string_view> regnum_text = Attribute(tag, "regnum");
      std::optional<int> regnum = regnum_text ? SmallInt(regnum_text, kMaxRegnum) : next_regnum;
      if (!name || name->empty() || !bits || *bits == 0 || *bits % 8 != 0 || !regnum) {
        error = absl::InvalidArgumentError(absl::StrCat("target description has a malformed <reg",
                                                        std::string(tag.substr(0, 80)), ">"));
        return;
      }
      if (layout.registers_.size() >= kMaxRegisters) {
        error = absl::InvalidArgumentError("target description has too many registers");
        return;
      }
      layout.registers_.push_back({std::string(*name), *regnum, *bits, 0});
      next_regnum = *regnum + 1;
    });
    if (!error.ok()) return error;
  }
  if (layout.registers_.empty()) {
    return absl::InvalidArgumentError("target description lists no registers");
  }
  std::stable_sort(
      layout.registers_.begin(), layout.registers_.end(),
      [](const GdbRegisterInfo& a, const GdbRegisterInfo& b) { return a.regnum < b.regnum; });
  for (size_t i = 0; i < layout.registers_.size(); ++i) {
    if (i > 0 && layout.registers_[i].regnum == layout.registers_[i - 1].regnum) {
      return absl::InvalidArgumentError(
          absl::StrCat("target description numbers two registers ", layout.registers_[i].regnum));
    }
    layout.registers_[i].g_offset = layout.g_bytes_;
    layout.g_bytes_ += static_cast<size_t>(layout.registers_[i].bitsize / 8);
  }
  return layout;
}

const GdbRegisterInfo* GdbRegisterLayout::Find(std::string_view name) const {
  for (const GdbRegisterInfo& info : registers_) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

namespace {

// Names in VcpuRegisters, in the order of its gpr array where applicable.
constexpr std::string_view kGprNames[engine::kGprCount] = {"eax", "ecx", "edx", "ebx",
                                                           "esp", "ebp", "esi", "edi"};
constexpr std::string_view kOther32[] = {"eip", "eflags",  "cs",  "ss",  "ds",  "es", "fs",
                                         "gs",  "fs_base", "cr0", "cr2", "cr3", "cr4"};

}  // namespace

absl::Status GdbRegisterLayout::CheckI386() const {
  auto check = [&](std::string_view name, bool allow64) -> absl::Status {
    const GdbRegisterInfo* info = Find(name);
    if (info == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("target description has no register ", std::string(name)));
    }
    if (info->bitsize != 32 && !(allow64 && info->bitsize == 64)) {
      return absl::FailedPreconditionError(absl::StrCat("register ", std::string(name), " has ",
                                                        info->bitsize, " bits, expected 32"));
    }
    return absl::OkStatus();
  };
  for (std::string_view name : kGprNames) {
    if (absl::Status s = check(name, false); !s.ok()) return s;
  }
  for (std::string_view name : kOther32) {
    if (absl::Status s = check(name, false); !s.ok()) return s;
  }
  return check("efer", true);
}

absl::StatusOr<engine::VcpuRegisters> GdbRegisterLayout::DecodeI386(std::string_view g_hex) const {
  if (absl::Status s = CheckI386(); !s.ok()) return s;
  auto value = [&](std::string_view name) -> absl::StatusOr<uint64_t> {
    const GdbRegisterInfo* info = Find(name);
    size_t begin = info->g_offset * 2;
    size_t length = static_cast<size_t>(info->bitsize / 8) * 2;
    if (begin + length > g_hex.size()) {
      return absl::DataLossError(absl::StrCat(
          "g reply of ", g_hex.size() / 2, " bytes is too short for register ", std::string(name)));
    }
    absl::StatusOr<uint64_t> decoded = DecodeGdbRegisterValue(g_hex.substr(begin, length));
    if (!decoded.ok()) {
      return absl::DataLossError(absl::StrCat("register ", std::string(name),
                                              " in g reply: ", decoded.status().message()));
    }
    return decoded;
  };
  engine::VcpuRegisters regs;
  for (int i = 0; i < engine::kGprCount; ++i) {
    absl::StatusOr<uint64_t> v = value(kGprNames[i]);
    if (!v.ok()) return v.status();
    regs.gpr[i] = static_cast<uint32_t>(*v);
  }
  uint32_t* const targets[] = {&regs.eip, &regs.eflags, &regs.cs, &regs.ss,      &regs.ds,
                               &regs.es,  &regs.fs,     &regs.gs, &regs.fs_base, &regs.cr0,
                               &regs.cr2, &regs.cr3,    &regs.cr4};
  static_assert(std::size(targets) == std::size(kOther32));
  for (size_t i = 0; i < std::size(kOther32); ++i) {
    absl::StatusOr<uint64_t> v = value(kOther32[i]);
    if (!v.ok()) return v.status();
    *targets[i] = static_cast<uint32_t>(*v);
  }
  absl::StatusOr<uint64_t> efer = value("efer");
  if (!efer.ok()) return efer.status();
  regs.efer = *efer;
  return regs;
}

absl::StatusOr<uint64_t> DecodeGdbRegisterValue(std::string_view hex) {
  if (hex.empty() || hex.size() > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("register value of ", hex.size(), " hex digits (expected 2-16)"));
  }
  if (hex.find_first_of("xX") != std::string_view::npos) {
    return absl::UnavailableError("register value is unavailable (xx)");
  }
  absl::StatusOr<std::vector<uint8_t>> bytes = HexDecode(hex);
  if (!bytes.ok()) return bytes.status();
  uint64_t value = 0;
  for (size_t i = bytes->size(); i-- > 0;) value = value << 8 | (*bytes)[i];
  return value;
}

std::string EncodeGdbRegisterValue(uint64_t value, size_t bytes) {
  std::vector<uint8_t> little(bytes, 0);
  for (size_t i = 0; i < bytes && i < 8; ++i) little[i] = static_cast<uint8_t>(value >> (8 * i));
  return HexEncode(little);
}

}  // namespace tprd::backend
