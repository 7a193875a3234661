# check_layers.cmake - fails when an #include points up the layers of
# DESIGN.md §1 (the table is cmake/layers.cmake).
#
#   cmake -DROOT=<source tree> [-DSTAMP=<file>] -P cmake/check_layers.cmake
#
# Scans every .c/.h/.cu/.cuh under ROOT/<module>/ for each module of the
# table. An include is resolved as the compiler would: a quoted path first
# against the including file's folder (always so for ./ and ../), else
# against ROOT (the one include directory of every target). One that lands
# in another module or in a top folder (tests/, bench/, fuzz/) must be
# allowed by the including module's rule or by a FILE:HEADER exception.
# Each violation is one line on stderr, `FILE:LINE: #include "X" points
# up the layers: RULE`; then the script fails. On success it touches STAMP
# (the build's output).
#
# Not checked: headers outside ROOT (system, libuv, HDF5, CUDA). Lines are
# read without a preprocessor, so an #include line inside #if 0 or a block
# comment counts too (STYLE.md allows neither); one mid-line does not.
# Plain CMake so a bare Debian 12 with cmake builds it: no Python, no grep.
cmake_minimum_required(VERSION 3.20)
if(NOT ROOT)
  message(FATAL_ERROR "check_layers: -DROOT=<source tree> is required")
endif()
get_filename_component(ROOT "${ROOT}" ABSOLUTE)
include(${CMAKE_CURRENT_LIST_DIR}/layers.cmake)

set(_known ${BT_LAYER_MODULES} ${BT_LAYER_TOP})
set(_bad 0)
set(_files_seen 0)

# The module's rule in words, for the message.
function(rule_text mod out)
  set(allowed ${BT_LAYER_${mod}})
  if(allowed)
    string(REPLACE ";" ", " allowed "${allowed}")
    set(${out} "${mod}/ may include only ${allowed} (cmake/layers.cmake, DESIGN.md §1)" PARENT_SCOPE)
  else()
    set(${out} "${mod}/ may include no other module (cmake/layers.cmake, DESIGN.md §1)" PARENT_SCOPE)
  endif()
endfunction()

foreach(mod IN LISTS BT_LAYER_MODULES)
  if(NOT IS_DIRECTORY "${ROOT}/${mod}")
    continue()
  endif()
  file(GLOB_RECURSE files RELATIVE "${ROOT}"
       "${ROOT}/${mod}/*.c" "${ROOT}/${mod}/*.h" "${ROOT}/${mod}/*.cu" "${ROOT}/${mod}/*.cuh")
  list(SORT files)
  foreach(f IN LISTS files)
    math(EXPR _files_seen "${_files_seen} + 1")
    get_filename_component(fdir "${ROOT}/${f}" DIRECTORY)
    file(READ "${ROOT}/${f}" text)
    # One list element per line. A CMake list splits on ';' except inside
    # [...] and honours '\', so those become harmless characters first: an
    # #include line needs none of them.
    string(REPLACE "\\" "/" text "${text}")
    string(REPLACE ";" "," text "${text}")
    string(REPLACE "[" "(" text "${text}")
    string(REPLACE "]" ")" text "${text}")
    string(REPLACE "\n" ";" lines "${text}")
    set(n 0)
    foreach(line IN LISTS lines)
      math(EXPR n "${n} + 1")
      if(NOT line MATCHES "^[ \t]*#[ \t]*include[ \t]*([\"<])([^\">]+)[\">]")
        continue()
      endif()
      if(CMAKE_MATCH_1 STREQUAL "<")
        set(shown "<${CMAKE_MATCH_2}>")
      else()
        set(shown "\"${CMAKE_MATCH_2}\"")
      endif()
      set(quote "${CMAKE_MATCH_1}")
      set(inc "${CMAKE_MATCH_2}")
      if(quote STREQUAL "\"" AND (inc MATCHES "^\\.\\.?/" OR EXISTS "${fdir}/${inc}"))
        get_filename_component(abs "${inc}" ABSOLUTE BASE_DIR "${fdir}")
      else()
        get_filename_component(abs "${inc}" ABSOLUTE BASE_DIR "${ROOT}")
      endif()
      file(RELATIVE_PATH rel "${ROOT}" "${abs}")
      if(NOT rel MATCHES "^([^/]+)/")
        continue() # outside ROOT, or a file at its top
      endif()
      set(target "${CMAKE_MATCH_1}")
      if(target STREQUAL mod OR NOT target IN_LIST _known)
        continue()
      endif()
      if(target IN_LIST BT_LAYER_${mod} OR "${f}:${rel}" IN_LIST BT_LAYER_EXCEPTIONS)
        continue()
      endif()
      if(target IN_LIST BT_LAYER_TOP)
        set(why "no module may include ${target}/ (cmake/layers.cmake, DESIGN.md §1)")
      else()
        rule_text(${mod} why)
      endif()
      if(NOT rel STREQUAL inc)
        set(shown "${shown} (= ${rel})")
      endif()
      message(NOTICE "${f}:${n}: #include ${shown} points up the layers: ${why}")
      math(EXPR _bad "${_bad} + 1")
    endforeach()
  endforeach()
endforeach()

if(_bad GREATER 0)
  message(FATAL_ERROR "check_layers: ${_bad} include(s) break the layers of DESIGN.md §1")
endif()
if(_files_seen EQUAL 0)
  message(FATAL_ERROR "check_layers: no module folder under ${ROOT}")
endif()
if(STAMP)
  file(TOUCH "${STAMP}")
endif()
