# Packaging of the public library `twilight` (the C API). The top-level CMakeLists.txt
# includes this file right after it defines the target. It also sets how the library is
# linked, because that decides what the installed package exposes:
#   - only twl_* symbols are exported (version script): twilight_core is a static archive
#     linked in, and without the script its C++ symbols would be exported by default;
#   - installed: lib (+ SONAME link), twilight.h + twilight.hpp, a CMake package
#     (find_package(twilight) -> twilight::twilight) and twilight.pc. twilight_core and its
#     headers are private and not installed: the C header is standalone.
# Everything is in the install component "twilight" (cmake --install ... --component twilight).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TWL_API_DIR ${CMAKE_CURRENT_LIST_DIR})

# The header's version macros must match the project version (they cannot drift).
file(STRINGS ${TWL_API_DIR}/twilight.h TWL_HEADER_VERSION_LINES
     REGEX "^#define TWL_VERSION_(MAJOR|MINOR|PATCH) [0-9]+$")
set(TWL_HEADER_VERSION "")
foreach(part MAJOR MINOR PATCH)
  foreach(line ${TWL_HEADER_VERSION_LINES})
    if(line MATCHES "^#define TWL_VERSION_${part} ([0-9]+)$")
      list(APPEND TWL_HEADER_VERSION ${CMAKE_MATCH_1})
    endif()
  endforeach()
endforeach()
list(JOIN TWL_HEADER_VERSION "." TWL_HEADER_VERSION)
if(NOT TWL_HEADER_VERSION STREQUAL PROJECT_VERSION)
  message(FATAL_ERROR "api/twilight.h says version ${TWL_HEADER_VERSION}, "
                      "project() says ${PROJECT_VERSION}: update TWL_VERSION_* in the header")
endif()

if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
  target_link_options(twilight PRIVATE
    "LINKER:--version-script=${TWL_API_DIR}/twilight.map"
    "LINKER:--exclude-libs,ALL")
  # Sanitizer builds (scripts/run-sanitizers.sh) leave the sanitizer runtime's symbols to the
  # executable, so only uninstrumented builds can insist on a fully resolved library.
  if(NOT CMAKE_CXX_FLAGS MATCHES "-fsanitize=")
    target_link_options(twilight PRIVATE "LINKER:--no-undefined")
  endif()
  set_property(TARGET twilight APPEND PROPERTY LINK_DEPENDS ${TWL_API_DIR}/twilight.map)
endif()
set_target_properties(twilight PROPERTIES
  PUBLIC_HEADER "${TWL_API_DIR}/twilight.h;${TWL_API_DIR}/twilight.hpp"
  EXPORT_NAME twilight)

install(TARGETS twilight EXPORT twilightTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT twilight NAMELINK_COMPONENT twilight
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT twilight
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT twilight
  PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT twilight)

set(TWL_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/twilight)
install(EXPORT twilightTargets NAMESPACE twilight:: FILE twilight-targets.cmake
  DESTINATION ${TWL_CMAKE_DIR} COMPONENT twilight)
configure_package_config_file(${TWL_API_DIR}/twilight-config.cmake.in
  ${PROJECT_BINARY_DIR}/twilight-config.cmake INSTALL_DESTINATION ${TWL_CMAKE_DIR})
# 0.x: only the same minor version is ABI compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/twilight-config-version.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/twilight-config.cmake
              ${PROJECT_BINARY_DIR}/twilight-config-version.cmake
  DESTINATION ${TWL_CMAKE_DIR} COMPONENT twilight)

# pkg-config: prefix relative to the .pc file, so `cmake --install --prefix X` relocates it.
file(RELATIVE_PATH TWL_PC_PREFIX_FROM_PCDIR
     ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig ${CMAKE_INSTALL_PREFIX})
string(REGEX REPLACE "/$" "" TWL_PC_PREFIX_FROM_PCDIR "${TWL_PC_PREFIX_FROM_PCDIR}")
configure_file(${TWL_API_DIR}/twilight.pc.in ${PROJECT_BINARY_DIR}/twilight.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/twilight.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig COMPONENT twilight)
