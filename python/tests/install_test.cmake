# ctest script: `cmake --install --component python` into a temporary prefix, then import the
# package from there with TWILIGHT_LIB unset (it must find the library inside the package) and
# decode one step on the CPU backend.
foreach(var BUILD_DIR WORK_DIR PYTHON SITE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "install_test: -D${var}=... missing")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}
                        --component python RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install --component python failed")
endif()
set(script [=[
import os, sys, ctypes
import twilight
assert os.path.dirname(twilight.library_path) == os.path.dirname(twilight.__file__), twilight.library_path
rt = twilight.Runtime(1, 2, 1, 8, backend="cpu")
s = rt.create_sequence()
kv = (ctypes.c_uint16 * 8)(*([0x3c00] * 8))  # FP16 ones, without NumPy
from twilight import _lib
_lib.twl_sequence_append(rt._handle, s, 0, 1, kv, kv, _lib.DTYPE_FP16, _lib.MEMORY_HOST)
assert rt.length(s, 0) == 1
print("installed package OK:", twilight.version(), twilight.library_path)
]=])
execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=TWILIGHT_LIB
                        PYTHONPATH=${WORK_DIR}/${SITE} PYTHONDONTWRITEBYTECODE=1
                        ${PYTHON} -c "${script}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "import of the installed package failed:\n${out}\n${err}")
endif()
message(STATUS "${out}")
