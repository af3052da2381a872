#include "tests/fakes/qemu_gdbstub_script.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvm-backend/core/gdb_packet.h"

namespace tprd::backend {
namespace {

constexpr char kTargetXml[] =
    R"(<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target>)"
    R"(<architecture>i386</architecture><xi:include href="i386-32bit.xml"/></target>)";

}  // namespace

std::string QemuI386Xml() {
  std::string xml = R"(<feature name="org.gnu.gdb.i386.core">)"
                    R"(<reg name="eax" bitsize="32" type="int32" regnum="0"/>)";
  for (const char* name : {"ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags", "cs",
                           "ss", "ds", "es", "fs", "gs"}) {
    absl::StrAppend(&xml, R"(<reg name=")", name, R"(" bitsize="32" type="int32"/>)");
  }
  xml += R"(<!-- * } <reg name="cs_base" bitsize="32" type="int32"/> -->)";
  for (const char* name :
       {"fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"}) {
    absl::StrAppend(&xml, R"(<reg name=")", name, R"(" bitsize="32" type="int32"/>)");
  }
  xml += R"(<reg name="st0" bitsize="80" type="i387_ext"/>)"
         R"(<reg name="fctrl" bitsize="32" type="int" group="float"/></feature>)";
  return xml;
}

std::string Le32(uint32_t v) {
  return absl::StrFormat("%02x%02x%02x%02x", v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24);
}

// (absl::StrCat, not "literal" + std::string: GCC 12 at -O3 warns -Wrestrict on the latter, a
// false positive, GCC bug 105329.)
void ScriptQemuGdbHandshake(FakeByteStream& stub, bool vm_was_running) {
  stub.ExpectWrite(EncodeGdbPacket("qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+"));
  if (vm_was_running) stub.Send(EncodeGdbPacket("T02thread:01;")).ExpectWrite("+");
  stub.Send(
          absl::StrCat("+", EncodeGdbPacket("PacketSize=1000;qXfer:features:read+;multiprocess+")))
      .ExpectWrite("+");
  stub.ExpectCommand("qXfer:features:read:target.xml:0,ffb",
                     absl::StrCat("l", EscapeGdbBinary(kTargetXml)));
  std::string xml = EscapeGdbBinary(QemuI386Xml());
  // Two parts, to exercise `m` continuation.
  size_t half = xml.size() / 2;
  if (xml[half - 1] == '}') ++half;
  stub.ExpectCommand("qXfer:features:read:i386-32bit.xml:0,ffb",
                     absl::StrCat("m", xml.substr(0, half)));
  stub.ExpectCommand(absl::StrFormat("qXfer:features:read:i386-32bit.xml:%x,ffb",
                                     UnescapeGdbBinary(xml.substr(0, half))->size()),
                     absl::StrCat("l", xml.substr(half)));
  stub.ExpectCommand("?", "T02thread:p01.01;");
}

}  // namespace tprd::backend
