// Scripts of QEMU 7.2's gdbstub for FakeByteStream, shared by the tests of GdbClient and of
// QemuGuestVm: the handshake GdbClient::Attach goes through and the register encoding.
#ifndef TPRD_TESTS_FAKES_QEMU_GDBSTUB_SCRIPT_H_
#define TPRD_TESTS_FAKES_QEMU_GDBSTUB_SCRIPT_H_

#include <cstdint>
#include <string>

#include "tests/fakes/fake_byte_stream.h"

namespace tprd::backend {

// Shaped like QEMU 7.2's i386-32bit.xml, including its commented-out registers; the `*` and `}`
// in the comment exercise escapes of the qXfer reply.
std::string QemuI386Xml();

// A 32-bit value as `g` and `p` replies carry it: little-endian hex.
std::string Le32(uint32_t v);

// QEMU's answers to GdbClient::Attach: qSupported (multiprocess+), target.xml and its include in
// two parts (exercising `m` continuation), `?` answered for thread p01.01. When the VM was
// running, the unsolicited stop comes first.
void ScriptQemuGdbHandshake(FakeByteStream& stub, bool vm_was_running);

}  // namespace tprd::backend

#endif  // TPRD_TESTS_FAKES_QEMU_GDBSTUB_SCRIPT_H_
