# layers_test.cmake - tests of cmake/check_layers.cmake, the build's check
# of DESIGN.md §1's layers. Each CASE builds a small fixture tree under
# WORK, runs the checker on it in a child cmake, and asserts the outcome:
# an include that points up (or across, or into tests/) fails naming the
# file, the line and the rule; a tree that keeps to the table passes.
# CASE=source_tree runs the checker on the real source tree.
#
#   cmake -DCASE=<name> -DWORK=<scratch dir> -DSOURCE=<repo> -P tests/layers_test.cmake
cmake_minimum_required(VERSION 3.20)
foreach(v CASE WORK SOURCE)
  if(NOT ${v})
    message(FATAL_ERROR "layers_test: -D${v}= is required")
  endif()
endforeach()
set(tree "${WORK}/${CASE}")
file(REMOVE_RECURSE "${tree}")
file(MAKE_DIRECTORY "${tree}")

function(put rel text)
  file(WRITE "${tree}/${rel}" "${text}")
endfunction()

# Runs the checker on ROOT; sets rc and out (stdout and stderr) in the caller.
function(check root)
  file(REMOVE "${WORK}/${CASE}.stamp")
  execute_process(
    COMMAND ${CMAKE_COMMAND} -DROOT=${root} -DSTAMP=${WORK}/${CASE}.stamp
            -P ${SOURCE}/cmake/check_layers.cmake
    RESULT_VARIABLE r OUTPUT_VARIABLE o ERROR_VARIABLE e)
  set(rc "${r}" PARENT_SCOPE)
  set(out "${o}${e}" PARENT_SCOPE)
endfunction()

function(expect_pass)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "expected the check to pass, it exited ${rc}:\n${out}")
  endif()
  if(NOT EXISTS "${WORK}/${CASE}.stamp")
    message(FATAL_ERROR "the check passed but did not touch its stamp")
  endif()
  message(STATUS "passed as expected")
endfunction()

# Each argument is a line the output must hold; the count of violations
# must equal the number of arguments (no extra, no missing ones).
function(expect_fail)
  if(rc EQUAL 0)
    message(FATAL_ERROR "expected the check to fail, it passed:\n${out}")
  endif()
  if(EXISTS "${WORK}/${CASE}.stamp")
    message(FATAL_ERROR "the check failed but touched its stamp")
  endif()
  foreach(want IN LISTS ARGN)
    string(FIND "${out}" "${want}" at)
    if(at EQUAL -1)
      message(FATAL_ERROR "expected in the output:\n  ${want}\ngot:\n${out}")
    endif()
  endforeach()
  list(LENGTH ARGN n)
  string(REGEX MATCHALL "points up the layers" hits "${out}")
  list(LENGTH hits got)
  if(NOT got EQUAL n)
    message(FATAL_ERROR "expected ${n} violation(s), got ${got}:\n${out}")
  endif()
  string(FIND "${out}" "check_layers: ${n} include(s) break the layers" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "expected the summary of ${n} violation(s), got:\n${out}")
  endif()
  message(STATUS "failed as expected:\n${out}")
endfunction()

# The headers every fixture may point at.
put(common/error.h "int e;\n")
put(schedules/schedule.h "int s;\n")
put(kernels/backend.h "int k;\n")
put(checkpoint/ckpt.h "int c;\n")
put(worker/cmd.h "int w;\n")
put(worker/stage.h "int st;\n")
put(launcher/cmd.h "int r;\n")
put(tests/support/e2e.h "int t;\n")

if(CASE STREQUAL "upward_include_fails")
  # Line 4: brackets, semicolons, a backslash and a blank line before it
  # must not shift the count.
  put(schedules/sim.c [=[#include "common/error.h"
static int a[2] = {1, 2}; char b = '\\';

  #  include "worker/stage.h"  /* up */
int f(void) { return a[0]; }
]=])
  check("${tree}")
  expect_fail([=[schedules/sim.c:4: #include "worker/stage.h" points up the layers: schedules/ may include only common (cmake/layers.cmake, DESIGN.md §1)]=])
elseif(CASE STREQUAL "clean_tree_passes")
  put(common/log.c "#include <stdio.h>\n#include \"common/error.h\"\n#include \"log.h\"\n")
  put(common/log.h "int l;\n")
  put(schedules/sim.c "/* not an include: #include \"worker/stage.h\" */\n#include \"common/error.h\"\n#include \"schedules/schedule.h\"\n#include <sys/stat.h>\n")
  put(kernels/cpu/cpu.c "#include \"kernels/backend.h\"\n#include \"../backend.h\"\n#include \"common/error.h\"\n#include <cblas.h>\n")
  put(kernels/cuda/k.cu "#include \"kernels/backend.h\"\n#include \"common/error.h\"\n")
  put(checkpoint/shard.c "#include \"checkpoint/ckpt.h\"\n#include \"common/error.h\"\n#include <hdf5.h>\n")
  put(worker/pipeline.c "#include \"checkpoint/ckpt.h\"\n#include \"common/error.h\"\n#include \"kernels/backend.h\"\n#include \"schedules/schedule.h\"\n#include \"worker/cmd.h\"\n")
  put(launcher/cmd_run.c "#include \"checkpoint/ckpt.h\"\n#include \"common/error.h\"\n#include \"launcher/cmd.h\"\n#include \"schedules/schedule.h\"\n#include <uv.h>\n")
  put(launcher/main.c "#include \"checkpoint/ckpt.h\"\n#include \"launcher/cmd.h\"\n#include \"worker/cmd.h\"\n")
  put(tests/test_x.c "#include \"launcher/cmd.h\"\n#include \"worker/stage.h\"\n#include \"tests/support/e2e.h\"\n")
  put(bench/bench_x.c "#include \"worker/stage.h\"\n")
  check("${tree}")
  expect_pass()
elseif(CASE STREQUAL "across_and_angle_fail")
  # Sideways (checkpoint and schedules never include each other), an angle
  # include, and the bottom layer reaching up.
  put(checkpoint/shard.c "#include \"common/error.h\"\n#include \"schedules/schedule.h\"\n")
  put(worker/w.c "#include <stdio.h>\n#include <launcher/cmd.h>\n")
  put(common/c.c "#include \"common/error.h\"\n\n#include \"kernels/backend.h\"\n")
  check("${tree}")
  expect_fail(
    [=[checkpoint/shard.c:2: #include "schedules/schedule.h" points up the layers: checkpoint/ may include only common]=]
    [=[worker/w.c:2: #include <launcher/cmd.h> points up the layers: worker/ may include only schedules, kernels, checkpoint, common]=]
    [=[common/c.c:3: #include "kernels/backend.h" points up the layers: common/ may include no other module]=])
elseif(CASE STREQUAL "relative_path_fails")
  # A ../ path is resolved against the including file, as the compiler does.
  put(kernels/cpu/cpu.c "#include \"../../launcher/cmd.h\"\n")
  check("${tree}")
  expect_fail([=[kernels/cpu/cpu.c:1: #include "../../launcher/cmd.h" (= launcher/cmd.h) points up the layers: kernels/ may include only common (cmake/layers.cmake, DESIGN.md §1)]=])
elseif(CASE STREQUAL "exception_is_one_file_one_header")
  # launcher/main.c may include worker/cmd.h; no other launcher file may,
  # and main.c may include nothing else of worker/.
  put(launcher/main.c "#include \"worker/cmd.h\"\n#include \"worker/stage.h\"\n")
  put(launcher/cmd_run.c "#include \"launcher/cmd.h\"\n#include \"worker/cmd.h\"\n")
  check("${tree}")
  expect_fail(
    [=[launcher/main.c:2: #include "worker/stage.h" points up the layers: launcher/ may include only schedules, checkpoint, common]=]
    [=[launcher/cmd_run.c:2: #include "worker/cmd.h" points up the layers: launcher/ may include only schedules, checkpoint, common]=])
elseif(CASE STREQUAL "tests_folder_fails")
  put(worker/w.h "#include \"tests/support/e2e.h\"\n")
  check("${tree}")
  expect_fail([=[worker/w.h:1: #include "tests/support/e2e.h" points up the layers: no module may include tests/]=])
elseif(CASE STREQUAL "source_tree")
  check("${SOURCE}")
  expect_pass()
else()
  message(FATAL_ERROR "layers_test: unknown CASE ${CASE}")
endif()
