# ctest script: every tool parses flags the same way (bench/lib/tool_flags.h): --help exits 0
# and lists each flag with its default; a bad value, an unknown or abbreviated flag, a missing
# value or a stray argument exits 2 with a message (never a crash, never ignored).
# Inputs: -DBIN_DIR=<dir of twl_demo, twl_disk_tier, twl_kernels, twl_offload>.
if(NOT DEFINED BIN_DIR)
  message(FATAL_ERROR "tools_flags_test: -DBIN_DIR=... missing")
endif()
set(failures "")

function(expect rc_want tool)
  execute_process(COMMAND ${BIN_DIR}/${tool} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err TIMEOUT 60)
  string(REPLACE ";" " " args "${ARGN}")
  if(NOT rc STREQUAL "${rc_want}")
    set(failures "${failures}\n${tool} ${args}: exit '${rc}', expected ${rc_want}\n${out}${err}"
        PARENT_SCOPE)
  elseif(rc_want EQUAL 2 AND NOT err MATCHES "${tool}: .*see --help")
    set(failures "${failures}\n${tool} ${args}: no message on stderr: '${err}'" PARENT_SCOPE)
  endif()
  set(LAST_OUT "${out}" PARENT_SCOPE)
endfunction()

foreach(tool twl_demo twl_disk_tier twl_kernels twl_offload)
  if(NOT EXISTS ${BIN_DIR}/${tool})
    continue()
  endif()
  expect(0 ${tool} --help)
  if(NOT LAST_OUT MATCHES "flags \\(--name=value")
    set(failures "${failures}\n${tool} --help: no flag list")
  endif()
  expect(2 ${tool} --no-such-flag 1)
  expect(2 ${tool} stray)
  expect(2 ${tool} --help-me)
endforeach()

expect(0 twl_demo --help)
foreach(line "--page-size +tokens per page \\[16\\]" "--backend .*auto\\|cpu\\|gpu-hbm\\|gpu-offload"
             "--disk .*\\[\"\"\\]" "--p +top-p")
  if(NOT LAST_OUT MATCHES "${line}")
    set(failures "${failures}\ntwl_demo --help lacks '${line}':\n${LAST_OUT}")
  endif()
endforeach()
expect(2 twl_demo --page-size 0)
expect(2 twl_demo --page_size=0)
expect(2 twl_demo --context abc)
expect(2 twl_demo --context=-5)
expect(2 twl_demo --context 99999999999)
expect(2 twl_demo --cont 100)           # no prefix matching
expect(2 twl_demo --backend offload)    # one spelling: gpu-offload
expect(2 twl_demo --backend gpu)
expect(2 twl_demo --p nan)
expect(2 twl_demo --p 0)
expect(2 twl_demo --k-bits 3)
expect(2 twl_demo --q-heads 6 --kv-heads 4)
expect(2 twl_demo --head-dim 0)
expect(2 twl_demo --seqs)               # missing value
expect(2 twl_demo --host-pool-mb 8)     # needs --disk
expect(2 twl_disk_tier --depths 1,x)
expect(2 twl_disk_tier --engines uring,disk)
expect(2 twl_disk_tier --mib 0)
expect(2 twl_disk_tier --buffered=maybe)
expect(0 twl_disk_tier --no-preallocate --buffered --help)
if(EXISTS ${BIN_DIR}/twl_kernels)
  expect(2 twl_kernels --reps 0)
  expect(2 twl_kernels --contexts 8,abc)
  expect(2 twl_kernels --quest_fraction 2)
endif()
if(EXISTS ${BIN_DIR}/twl_offload)
  expect(2 twl_offload --workloads peaked,foo)
  expect(2 twl_offload --cache-frac -1)
  expect(2 twl_offload --steps=x)
endif()

if(failures)
  message(FATAL_ERROR "tool flag checks failed:${failures}")
endif()
message(STATUS "tool flags: all checks passed")
