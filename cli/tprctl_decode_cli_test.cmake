# ctest script: runs `tprctl decode` as a user would and checks exit codes and output.
# Usage: cmake -DTPRCTL=/path/to/tprctl -P tprctl_decode_cli_test.cmake
if(NOT TPRCTL)
  message(FATAL_ERROR "pass -DTPRCTL=<path to tprctl>")
endif()

set(failures 0)

# expect(<exit code> <regex for stdout> <regex for stderr> args...)
function(expect code out_regex err_regex)
  execute_process(COMMAND ${TPRCTL} ${ARGN}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 30)
  set(ok TRUE)
  if(NOT rc STREQUAL "${code}")
    set(ok FALSE)
  elseif(NOT out MATCHES "${out_regex}")
    set(ok FALSE)
  elseif(NOT err MATCHES "${err_regex}")
    set(ok FALSE)
  endif()
  if(NOT ok)
    message(SEND_ERROR "tprctl ${ARGN}: want exit ${code}, stdout ~ '${out_regex}', "
                       "stderr ~ '${err_regex}'; got exit ${rc}\nstdout: ${out}\nstderr: ${err}")
  endif()
endfunction()

# Good input: JSON with every documented key, patchable with a replacement.
set(keys "\"address\":.*\"bytes\":.*\"length\":5.*\"tpr_access\":true.*"
         "\"form\":\"mov_eax_from_moffs\".*\"register\":\"eax\".*\"patchable\":true.*"
         "\"reason\":\"\".*\"disassembly\":\"mov eax.*\"replacement\":\"e8[0-9a-f]+\"")
string(JOIN "" keys_regex ${keys})
expect(0 "^{.*${keys_regex}.*}\n$" "^$" decode --address 0x80001000 --json a18000feff)
# Spaces between bytes, --tpr and --blob-va given.
expect(0 "\"patchable\":true" "^$"
  decode --address 0x80001000 --tpr 0xfffe0080 --blob-va 0x800e8000 --json "8b 0d 80 00 fe ff")
# Not patchable is still exit 0, with a reason and an empty replacement.
expect(0 "\"patchable\":false.*\"reason\":\"prefix\".*\"replacement\":\"\"" "^$"
  decode --address 0x80001000 --json 64a18000feff)
# Bytes that do not decode: a result, exit 0.
expect(0 "\"length\":0.*\"reason\":\"undecodable\"" "^$" decode --address 0x80001000 --json 0f)
# and dword [tpr], 0: the 2-byte nop 66 90, then the call to and_tpr_zero ending at the end.
expect(0 "\"length\":7.*\"form\":\"and_mem_zero\".*\"register\":null.*\"patchable\":true.*\"disassembly\":\"and dword ptr \\[0xFFFE0080\\], 0x00\".*\"replacement\":\"6690e8[0-9a-f]+\""
  "^$" decode --address 0x80001000 --json 83258000feff00)
expect(0 "form: +and_mem_zero.*patchable: +yes.*replacement: +6690e8" "^$"
  decode --address 0x80001000 "83 25 80 00 fe ff 00")
# Any other immediate keeps TPR bits: not patchable, and the reason names the one that is.
expect(0 "\"patchable\":false.*\"reason\":\"other_operation\".*0x0F.*83 25 <tpr> 00.*\"replacement\":\"\""
  "^$" decode --address 0x80001000 --json 83258000feff0f)
expect(0 "\"patchable\":false.*\"reason\":\"other_operation\".*81 /4" "^$"
  decode --address 0x80001000 --json 81258000feff00000000)
# Readable output.
expect(0 "form: +mov_eax_from_moffs.*replacement: +e8" "^$" decode --address 0x80001000 a18000feff)
expect(0 "Usage" "" decode --help)

# Bad input: exit 2, exactly one line on stderr, nothing on stdout.
set(one_line "^tprctl[^\n]*\n$")
expect(2 "^$" "${one_line}" decode --address 0x80001000 "")
expect(2 "^$" "${one_line}" decode --address 0x80001000 a18000fef)
expect(2 "^$" "${one_line}" decode --address 0x80001000 a18000fexx)
expect(2 "^$" "${one_line}" decode --address 0x80001000 000102030405060708090a0b0c0d0e0f)
expect(2 "^$" "${one_line}" decode --address 0x1ffffffff a18000feff)
expect(2 "^$" "${one_line}" decode --address banana a18000feff)
expect(2 "^$" "${one_line}" decode --address 0x80001000 --tpr 0x -- a18000feff)
expect(2 "^$" "${one_line}" decode --address 0x80001000 --blob-va 0x800e8001 a18000feff)
expect(2 "^$" "${one_line}" decode a18000feff)
expect(2 "^$" "${one_line}" decode --address 0x80001000)
expect(2 "^$" "${one_line}" decode --address 0x80001000 --bogus a18000feff)
expect(2 "^$" "${one_line}")
