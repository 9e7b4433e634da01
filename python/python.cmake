# The Python package `twilight` (python/twilight, ctypes over the C API: nothing to compile).
# Included by the top-level CMakeLists.txt after the `twilight` library target.
#   install:  cmake --install <build> --component python [--prefix /usr/local]
#             puts python/twilight/*.py and libtwilight.so (inside the package, where the
#             package looks first) into TWL_PYTHON_INSTALL_DIR under the prefix.
#   tests:    ctest -R python  (pytest on the CPU backend with the library of this build)
find_program(TWL_PYTHON3 NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)  # Debian's: apt's packages
if(NOT TWL_PYTHON3)
  find_program(TWL_PYTHON3 NAMES python3)
endif()

set(TWL_PYTHON_DIR ${CMAKE_CURRENT_LIST_DIR})
if(TWL_PYTHON3 AND NOT DEFINED TWL_PYTHON_INSTALL_DIR)
  # lib/python3.X/dist-packages on Debian (on its sys.path under /usr/local), site-packages
  # elsewhere.
  execute_process(
    COMMAND ${TWL_PYTHON3} -c "import sys; d = 'dist-packages' if any(p.endswith('dist-packages') for p in sys.path) else 'site-packages'; print(f'lib/python{sys.version_info[0]}.{sys.version_info[1]}/{d}', end='')"
    OUTPUT_VARIABLE TWL_PYTHON_SITE RESULT_VARIABLE rc)
  if(rc EQUAL 0)
    set(TWL_PYTHON_INSTALL_DIR ${TWL_PYTHON_SITE} CACHE STRING
        "Where `cmake --install --component python` puts the package (relative to the prefix)")
  endif()
endif()
if(NOT TWL_PYTHON_INSTALL_DIR)
  set(TWL_PYTHON_INSTALL_DIR lib/python3/dist-packages CACHE STRING
      "Where `cmake --install --component python` puts the package (relative to the prefix)")
endif()

install(DIRECTORY ${TWL_PYTHON_DIR}/twilight DESTINATION ${TWL_PYTHON_INSTALL_DIR}
  COMPONENT python FILES_MATCHING PATTERN "*.py" PATTERN "__pycache__" EXCLUDE)
install(FILES $<TARGET_FILE:twilight> DESTINATION ${TWL_PYTHON_INSTALL_DIR}/twilight
  RENAME libtwilight.so COMPONENT python)

if(TWL_BUILD_TESTS)
  if(TWL_PYTHON3)
    # run_pytest.py exits 77 (ctest: skipped, shown as such) when pytest or NumPy is missing.
    add_test(NAME python_tests
      COMMAND ${TWL_PYTHON3} ${TWL_PYTHON_DIR}/tests/run_pytest.py -q -rs ${TWL_PYTHON_DIR}/tests
              -p no:cacheprovider)
    set_tests_properties(python_tests PROPERTIES LABELS "cpu;python" TIMEOUT 300
      SKIP_RETURN_CODE 77
      ENVIRONMENT "TWILIGHT_LIB=$<TARGET_FILE:twilight>;PYTHONPATH=${TWL_PYTHON_DIR};PYTHONDONTWRITEBYTECODE=1;TWL_SHARED_DIR=${PROJECT_SOURCE_DIR}/../shared")
    # The serving-loop example on the CPU backend with the trained stories260K: at p = 1 over
    # all pages its greedy tokens must equal the dense loop's (a few seconds).
    add_test(NAME python_example_llama_decode
      COMMAND ${TWL_PYTHON3} ${TWL_PYTHON_DIR}/examples/llama_decode.py --backend cpu
              --top-p 1 --selector full --k-bits 16 --batch 3 --prompt-len 48 --steps 16
              --expect-match --skip-missing)
    set_tests_properties(python_example_llama_decode PROPERTIES LABELS "cpu;python;example"
      TIMEOUT 300 SKIP_RETURN_CODE 77
      ENVIRONMENT "TWILIGHT_LIB=$<TARGET_FILE:twilight>;PYTHONDONTWRITEBYTECODE=1;TWL_SHARED_DIR=${PROJECT_SOURCE_DIR}/../shared")
    # The documented install: the package lands in a prefix and imports without TWILIGHT_LIB.
    add_test(NAME python_install
      COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${PROJECT_BINARY_DIR}
              -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/python_install
              -DPYTHON=${TWL_PYTHON3} -DSITE=${TWL_PYTHON_INSTALL_DIR}
              -P ${TWL_PYTHON_DIR}/tests/install_test.cmake)
    set_tests_properties(python_install PROPERTIES LABELS "cpu;python" TIMEOUT 120)
  else()
    message(STATUS "Twilight: no python3: the Python package's tests are not registered")
  endif()
endif()
