# Run after a Criterion test binary is built: asks it for its tests
# (`--list`) and writes one add_test() per Test(suite, name), so CTest runs
# and reports each behaviour on its own. Inputs: TEST_BIN, OUT_FILE, PREFIX,
# TIMEOUT, SERIAL, LABEL, ENVS (a ;-list given as |-separated).
execute_process(COMMAND ${TEST_BIN} --list OUTPUT_VARIABLE out ERROR_VARIABLE err
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "could not list the tests of ${TEST_BIN}: ${err}")
endif()
string(REPLACE "|" ";" envs "${ENVS}")
string(REPLACE "\n" ";" lines "${out}")
set(text "")
set(suite "")
foreach(line IN LISTS lines)
  if(line MATCHES "^([A-Za-z0-9_]+): [0-9]+ tests?$")
    set(suite "${CMAKE_MATCH_1}")
  elseif(line MATCHES "── ([A-Za-z0-9_]+)$")
    set(name "${CMAKE_MATCH_1}")
    set(t "${PREFIX}${suite}.${name}")
    string(APPEND text "add_test([=[${t}]=] [=[${TEST_BIN}]=] --filter [=[${suite}/${name}]=] --verbose -j1)\n")
    # Sanitizer reports fail a test even where Criterion's exit code says it
    # passed (Criterion 2.4.1 passes a test that leaks or trips UBSan).
    string(APPEND text "set_tests_properties([=[${t}]=] PROPERTIES TIMEOUT ${TIMEOUT} "
      "FAIL_REGULAR_EXPRESSION [=[ERROR: AddressSanitizer;ERROR: LeakSanitizer;runtime error: ;WARNING: ThreadSanitizer]=] "
      "SKIP_REGULAR_EXPRESSION [=[\\[SKIP\\] ${suite}::${name}: ]=] LABELS [=[${LABEL}]=] "
      "ENVIRONMENT [=[${envs}]=]")
    if(SERIAL)
      string(APPEND text " RUN_SERIAL TRUE")
    endif()
    string(APPEND text ")\n")
  endif()
endforeach()
file(WRITE ${OUT_FILE} "${text}")
