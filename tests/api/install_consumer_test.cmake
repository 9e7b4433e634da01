# ctest script (cmake -P): installs the `twilight` component of the build into a temporary
# prefix, then, as an outside user would:
#   1. checks that only the standalone headers were installed (no core headers needed);
#   2. configures, builds and runs a C project that uses find_package(twilight);
#   3. compiles and runs the same program with flags from `pkg-config twilight`;
#   4. checks that the shared library exports the C API (twl_*) and nothing else.
# Inputs: BUILD_DIR WORK_DIR CONSUMER_DIR GENERATOR C_COMPILER LIBDIR.
foreach(var BUILD_DIR WORK_DIR CONSUMER_DIR GENERATOR C_COMPILER LIBDIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install_consumer_test: -D${var}=... missing")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "FAILED (${rc}): ${cmd}\n${out}\n${err}")
  endif()
  set(RUN_OUTPUT "${out}" PARENT_SCOPE)
endfunction()

set(PREFIX ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${PREFIX} --component twilight)

# 1. Exactly the public headers.
file(GLOB_RECURSE headers RELATIVE ${PREFIX}/include ${PREFIX}/include/*)
list(SORT headers)
if(NOT headers STREQUAL "twilight.h;twilight.hpp")
  message(FATAL_ERROR "installed headers are '${headers}', expected twilight.h;twilight.hpp")
endif()
foreach(f twilight-config.cmake twilight-config-version.cmake twilight-targets.cmake)
  if(NOT EXISTS ${PREFIX}/${LIBDIR}/cmake/twilight/${f})
    message(FATAL_ERROR "${f} not installed")
  endif()
endforeach()

# 2. find_package(twilight).
run(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/cmake_consumer -G ${GENERATOR}
    -DCMAKE_C_COMPILER=${C_COMPILER} -DCMAKE_PREFIX_PATH=${PREFIX} -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/cmake_consumer)
run(${WORK_DIR}/cmake_consumer/consumer)
message(STATUS "find_package consumer: ${RUN_OUTPUT}")

# 3. pkg-config.
find_program(PKG_CONFIG NAMES pkg-config pkgconf REQUIRED)
run(${CMAKE_COMMAND} -E env PKG_CONFIG_PATH=${PREFIX}/${LIBDIR}/pkgconfig
    ${PKG_CONFIG} --cflags --libs twilight)
string(STRIP "${RUN_OUTPUT}" flags)
separate_arguments(flags UNIX_COMMAND "${flags}")
if(NOT flags MATCHES "-ltwilight")
  message(FATAL_ERROR "pkg-config gave '${flags}'")
endif()
run(${C_COMPILER} -std=c99 -Wall -Wextra -Werror ${CONSUMER_DIR}/consumer.c ${flags}
    -o ${WORK_DIR}/pc_consumer)
run(${CMAKE_COMMAND} -E env LD_LIBRARY_PATH=${PREFIX}/${LIBDIR} ${WORK_DIR}/pc_consumer)
message(STATUS "pkg-config consumer: ${RUN_OUTPUT}")
# The README's documented link line, on the example serving loop (C99, C API only).
if(DEFINED EXAMPLE_SRC)
  run(${C_COMPILER} -std=c99 -Wall -Wextra -Werror ${EXAMPLE_SRC} ${flags}
      -o ${WORK_DIR}/pc_serving_loop)
  run(${CMAKE_COMMAND} -E env LD_LIBRARY_PATH=${PREFIX}/${LIBDIR} ${WORK_DIR}/pc_serving_loop
      --backend cpu --quiet --requests 2)
  message(STATUS "pkg-config serving_loop.c: built and ran")
endif()

# SONAME: 0.x carries major.minor (every 0.x minor may break the ABI).
find_program(READELF readelf)
if(READELF AND DEFINED EXPECT_SONAME)
  file(GLOB libs ${PREFIX}/${LIBDIR}/libtwilight.so.*.*.*)
  run(${READELF} -d ${libs})
  if(NOT RUN_OUTPUT MATCHES "Library soname: \\[${EXPECT_SONAME}\\]")
    message(FATAL_ERROR "SONAME is not ${EXPECT_SONAME}:\n${RUN_OUTPUT}")
  endif()
  message(STATUS "SONAME ${EXPECT_SONAME}")
endif()

# 4. Exported symbols: the C API only.
find_program(NM nm)
if(NM)
  file(GLOB libs ${PREFIX}/${LIBDIR}/libtwilight.so.*.*.*)
  run(${NM} -D --defined-only ${libs})
  string(REPLACE "\n" ";" lines "${RUN_OUTPUT}")
  set(api 0)
  foreach(line ${lines})
    if(line MATCHES " ([A-Za-z_][A-Za-z0-9_@.]*)$")
      set(sym ${CMAKE_MATCH_1})
      if(sym MATCHES "^twl_")
        math(EXPR api "${api} + 1")
      elseif(NOT line MATCHES " [AUVWw] ")  # linker-defined absolute symbols are fine
        message(FATAL_ERROR "libtwilight exports a non-API symbol: ${line}")
      endif()
    endif()
  endforeach()
  if(api LESS 20)
    message(FATAL_ERROR "only ${api} twl_* symbols exported")
  endif()
  message(STATUS "exports: ${api} twl_* symbols and nothing else")
endif()
