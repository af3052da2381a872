# ctest script: runs tprd with --help, --version and bad command lines, as an operator would, and
# checks exit codes and output. Every case ends before tprd starts serving.
# Usage: cmake -DTPRD=/path/to/tprd -DWORK_DIR=/scratch/dir -P tprd_flags_cli_test.cmake
if(NOT TPRD OR NOT WORK_DIR)
  message(FATAL_ERROR "pass -DTPRD=<path to tprd> -DWORK_DIR=<scratch directory>")
endif()
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
# Should a case parse after all, tprd serves in WORK_DIR on libvirt's test driver, touches no
# real domain, and the TIMEOUT below ends it.
set(harmless --connect test:///default --socket ${WORK_DIR}/tprd.sock
              --state-dir ${WORK_DIR}/state)

# expect(<exit code> <regex for stdout> <regex for stderr> args...)
function(expect code out_regex err_regex)
  execute_process(COMMAND ${TPRD} ${harmless} ${ARGN}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 30)
  if(NOT rc STREQUAL "${code}" OR NOT out MATCHES "${out_regex}" OR NOT err MATCHES "${err_regex}")
    message(SEND_ERROR "tprd ${ARGN}: want exit ${code}, stdout ~ '${out_regex}', "
                       "stderr ~ '${err_regex}'; got exit ${rc}\nstdout: ${out}\nstderr: ${err}")
  endif()
endfunction()

# --help names every flag with its value and default; --version prints one line.
expect(0 "--connect URI[^\n]*qemu:///system.*--socket PATH[^\n]*/run/tprd/tprd.sock.*--state-dir DIR[^\n]*/var/lib/tprd.*--config FILE[^\n]*/etc/tprd/tprd.conf.*--adopt-domains GLOB[^\n]*default \\*.*--version"
  "^$" --help)
expect(0 "^tprd 0.1.0\n$" "^$" --version)

# Usage errors: exit 2, nothing on stdout, a "tprd: ..." line and then the help on stderr.
set(then_help "\n.*--adopt-domains GLOB")
expect(2 "^$" "^tprd: [^\n]*--bogus[^\n]*${then_help}" --bogus)
expect(2 "^$" "^tprd: [^\n]*stray[^\n]*${then_help}" stray)
expect(2 "^$" "^tprd: [^\n]*--adopt-domains[^\n]*${then_help}" --adopt-domains)
expect(2 "^$" "^tprd: [^\n]*connect[^\n]*${then_help}" -c)
expect(2 "^$" "^tprd: [^\n]*--adopt-domains[^\n]*${then_help}" --adopt-domains=)
# A flag is never the value of the flag before it, and `--flag=` takes nothing after it.
expect(2 "^$" "^tprd: --socket needs a value[^\n]*--x[^\n]*${then_help}" --socket --x)
expect(2 "^$" "^tprd: --connect needs a value[^\n]*${then_help}" -c --socket x.sock)
expect(2 "^$" "^tprd: unknown argument \"--x\"${then_help}" --socket= --x)
# A value is never glued to a short flag (CLI11 would read -connect=URI as -c "onnect=URI"), and
# the first --help or --version ends the command line, what precedes it parsed first.
expect(2 "^$" "^tprd: unknown argument \"-connect=test:///default\"${then_help}"
  -connect=test:///default)
expect(2 "^$" "^tprd: unknown argument \"--bogus\"${then_help}" --bogus --help)
expect(0 "^tprd 0.1.0\n$" "^$" --version --help --bogus)

# The config file is read before tprd starts: its errors are usage errors too, in both flag
# forms, and a flag given twice keeps its last value.
file(WRITE ${WORK_DIR}/bad.conf "sokcet = /tmp/x.sock\n")
expect(2 "^$" "^tprd: cannot read config file /nonexistent.conf${then_help}"
  --config /nonexistent.conf)
expect(2 "^$" "^tprd: [^\n]*bad.conf:1: [^\n]*sokcet" --config=${WORK_DIR}/bad.conf)
expect(2 "^$" "^tprd: [^\n]*bad.conf:1: " --config /nonexistent.conf --config ${WORK_DIR}/bad.conf)
