// Build-time generator: turns the linked blob images into C/C++ sources.
//
//   blob_gen NM ELF_A BIN_A BIN_B BIN_C BASE_B TPR_A TPR_C OUT_DIR
//
// BIN_A is the blob linked at base 0 with tpr_va = TPR_A, BIN_B at base BASE_B (same TPR),
// BIN_C at base 0 with tpr_va = TPR_C. A dword that differs by exactly BASE_B between A and B is
// a base relocation; by exactly TPR_C - TPR_A between A and C, a TPR relocation. Any other
// difference fails the build. Both deltas are multiples of 0x1000 with a nonzero second byte, so
// the first byte in which a relocated dword differs is always its second byte.
//
// Writes OUT_DIR/blob_layout.h (plain C #defines: every global symbol of ELF_A, offsets from the
// blob's start), OUT_DIR/blob_image.h and OUT_DIR/blob_image.cc (bytes and relocations).
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "blob_gen: %s\n", message.c_str());
  std::exit(1);
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot read " + path);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

uint32_t ParseU32(const std::string& text) {
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 0);
  if (end == text.c_str() || *end != '\0' || value > 0xFFFFFFFFull) Fail("bad number " + text);
  return static_cast<uint32_t>(value);
}

uint32_t Dword(const std::vector<uint8_t>& bytes, size_t offset) {
  return bytes[offset] | bytes[offset + 1] << 8 | bytes[offset + 2] << 16 |
         static_cast<uint32_t>(bytes[offset + 3]) << 24;
}

// Offsets of dwords that differ by exactly `delta` between `a` and `b`.
std::vector<uint32_t> FindRelocations(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b,
                                      uint32_t delta, const char* what) {
  std::vector<uint32_t> offsets;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;
    // The low byte of a relocated dword never changes (delta is page aligned): start at i - 1.
    if (i == 0 || i - 1 + 4 > a.size()) Fail(std::string("unexplained difference (") + what + ")");
    const size_t start = i - 1;
    if (Dword(b, start) - Dword(a, start) != delta) {
      char message[160];
      std::snprintf(message, sizeof message,
                    "%s: bytes at offset 0x%zx differ by something other than the link delta", what,
                    start);
      Fail(message);
    }
    offsets.push_back(static_cast<uint32_t>(start));
    i = start + 3;
  }
  return offsets;
}

// Global symbols of the ELF, as nm -P prints them.
std::map<std::string, uint32_t> ReadSymbols(const std::string& nm, const std::string& elf) {
  const std::string command = nm + " -P -g " + elf;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) Fail("cannot run " + command);
  std::map<std::string, uint32_t> symbols;
  char line[512];
  while (std::fgets(line, sizeof line, pipe) != nullptr) {
    std::istringstream fields(line);
    std::string name, type, value;
    if (!(fields >> name >> type >> value)) continue;
    if (name == "tpr_va" || name == "blob_link_base") continue;  // link parameters, not layout
    symbols[name] = ParseU32("0x" + value);
  }
  if (pclose(pipe) != 0) Fail(command + " failed");
  if (symbols.empty()) Fail("no symbols in " + elf);
  return symbols;
}

std::string MacroName(const std::string& symbol) {
  std::string name = "TPRD_BLOB_";
  for (char c : symbol) name += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) Fail("cannot write " + path);
}

std::string Hex(uint32_t value) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, "0x%X", value);
  return buffer;
}

std::string OffsetArray(const char* name, const std::vector<uint32_t>& offsets) {
  std::string text = std::string("const unsigned int ") + name + "[] = {";
  for (size_t i = 0; i < offsets.size(); ++i) {
    text += (i % 8 == 0 ? "\n    " : " ") + Hex(offsets[i]) + ",";
  }
  return text + "\n};\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 10) Fail("usage: blob_gen NM ELF_A BIN_A BIN_B BIN_C BASE_B TPR_A TPR_C OUT_DIR");
  const std::string nm = argv[1], elf_a = argv[2], out_dir = argv[9];
  const std::vector<uint8_t> image_a = ReadFile(argv[3]);
  const std::vector<uint8_t> image_b = ReadFile(argv[4]);
  const std::vector<uint8_t> image_c = ReadFile(argv[5]);
  const uint32_t base_b = ParseU32(argv[6]);
  const uint32_t tpr_a = ParseU32(argv[7]);
  const uint32_t tpr_c = ParseU32(argv[8]);
  if (image_a.empty() || image_a.size() != image_b.size() || image_a.size() != image_c.size()) {
    Fail("the three links differ in size");
  }
  if ((base_b & 0xFFF) != 0 || ((base_b >> 8) & 0xF0) == 0 || ((tpr_c - tpr_a) & 0xFFF) != 0 ||
      (((tpr_c - tpr_a) >> 8) & 0xF0) == 0) {
    Fail("link deltas must be page aligned with a nonzero bit in 0xF000");
  }
  const auto base_relocs = FindRelocations(image_a, image_b, base_b, "base");
  const auto tpr_relocs = FindRelocations(image_a, image_c, tpr_c - tpr_a, "tpr");
  const auto symbols = ReadSymbols(nm, elf_a);
  auto total = symbols.find("TOTAL_SIZE");
  if (total == symbols.end() || total->second != image_a.size()) {
    Fail("TOTAL_SIZE does not match the linked image size");
  }

  std::string layout =
      "/* Generated by guest-rom/tools/blob_gen from guest-rom/blob.s: do not edit. Plain C. */\n"
      "/* Label values are byte offsets from the blob's start; the rest are constants. */\n"
      "#ifndef TPRD_GUEST_ROM_BLOB_LAYOUT_H_\n#define TPRD_GUEST_ROM_BLOB_LAYOUT_H_\n\n";
  for (const auto& [name, value] : symbols) {
    layout += "#define " + MacroName(name) + " " + Hex(value) + "\n";
  }
  layout += "\n/* The TPR address the image was linked with (TPR relocations hold it). */\n";
  layout += "#define TPRD_BLOB_LINK_TPR_VA " + Hex(tpr_a) + "\n";
  layout += "#define TPRD_BLOB_BASE_RELOC_COUNT " + std::to_string(base_relocs.size()) + "\n";
  layout += "#define TPRD_BLOB_TPR_RELOC_COUNT " + std::to_string(tpr_relocs.size()) + "\n";
  layout += "#define TPRD_BLOB_SYMBOL_COUNT " + std::to_string(symbols.size()) + "\n";
  layout += "\n#endif /* TPRD_GUEST_ROM_BLOB_LAYOUT_H_ */\n";
  WriteFile(out_dir + "/blob_layout.h", layout);

  WriteFile(out_dir + "/blob_image.h",
            "/* Generated by guest-rom/tools/blob_gen: do not edit. */\n"
            "/* The blob linked at virtual base 0 with tpr_va = TPRD_BLOB_LINK_TPR_VA. */\n"
            "#ifndef TPRD_GUEST_ROM_BLOB_IMAGE_H_\n#define TPRD_GUEST_ROM_BLOB_IMAGE_H_\n\n"
            "#include \"guest-rom/blob_layout.h\"\n\n"
            "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n"
            "extern const unsigned char tprd_blob_image[TPRD_BLOB_TOTAL_SIZE];\n"
            "/* Offsets of dwords holding blob addresses: add the blob's virtual base. */\n"
            "extern const unsigned int tprd_blob_base_relocs[TPRD_BLOB_BASE_RELOC_COUNT];\n"
            "/* Offsets of dwords holding the TPR address: add tpr_va - TPRD_BLOB_LINK_TPR_VA. */\n"
            "extern const unsigned int tprd_blob_tpr_relocs[TPRD_BLOB_TPR_RELOC_COUNT];\n\n"
            "/* Every symbol of blob_layout.h by its assembly name, for tools. */\n"
            "struct tprd_blob_symbol {\n  const char* name;\n  unsigned int value;\n};\n"
            "extern const struct tprd_blob_symbol tprd_blob_symbols[TPRD_BLOB_SYMBOL_COUNT];\n\n"
            "#ifdef __cplusplus\n}\n#endif\n\n#endif /* TPRD_GUEST_ROM_BLOB_IMAGE_H_ */\n");

  std::string image =
      "// Generated by guest-rom/tools/blob_gen: do not edit.\n"
      "#include \"guest-rom/blob_image.h\"\n\nextern \"C\" {\n\n"
      "const unsigned char tprd_blob_image[TPRD_BLOB_TOTAL_SIZE] = {";
  for (size_t i = 0; i < image_a.size(); ++i) {
    image += (i % 16 == 0 ? "\n    " : " ") + std::to_string(image_a[i]) + ",";
  }
  image += "\n};\n\n" + OffsetArray("tprd_blob_base_relocs", base_relocs) + "\n" +
           OffsetArray("tprd_blob_tpr_relocs", tpr_relocs) +
           "\nconst struct tprd_blob_symbol tprd_blob_symbols[TPRD_BLOB_SYMBOL_COUNT] = {\n";
  for (const auto& [name, value] : symbols) {
    image += "    {\"" + name + "\", " + Hex(value) + "},\n";
  }
  image += "};\n\n}  // extern \"C\"\n";
  WriteFile(out_dir + "/blob_image.cc", image);
  return 0;
}
