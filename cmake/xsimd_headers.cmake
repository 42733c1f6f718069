# xsimd for a cross build. xsimd is header-only, but Debian's package config lives under the
# host's multiarch folder and would put -isystem /usr/include (the host's C library headers) on
# the cross compiler's command line. Instead the target `xsimd` gets a folder in the build tree
# holding only a link to the host's xsimd/ headers (libxsimd-dev), which are ISA-independent
# (arch neon64 on AArch64).
find_path(MXLM_XSIMD_HOST_INCLUDE xsimd/xsimd.hpp PATHS /usr/include /usr/local/include
          NO_DEFAULT_PATH NO_CMAKE_FIND_ROOT_PATH)
if(NOT TARGET xsimd)
  add_library(xsimd INTERFACE IMPORTED)
  if(MXLM_XSIMD_HOST_INCLUDE)
    set(_mxlm_xsimd_dir "${CMAKE_BINARY_DIR}/xsimd-include")
    file(MAKE_DIRECTORY "${_mxlm_xsimd_dir}")
    if(NOT EXISTS "${_mxlm_xsimd_dir}/xsimd")
      file(CREATE_LINK "${MXLM_XSIMD_HOST_INCLUDE}/xsimd" "${_mxlm_xsimd_dir}/xsimd" SYMBOLIC)
    endif()
    set_target_properties(xsimd PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_mxlm_xsimd_dir}")
  else()
    message(STATUS "xsimd headers not found: kernels that include xsimd will not build")
  endif()
endif()
