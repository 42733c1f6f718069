# The kernel test binary of the kernels-only build (MXLM_KERNELS_ONLY, the NEON cross build):
# the test sources that need nothing but mxlm_kernels, linked against a GoogleTest compiled from
# source with the same (cross) compiler. add_test on a target runs through
# CMAKE_CROSSCOMPILING_EMULATOR (qemu-aarch64) when cross-compiling.
set(MXLM_GTEST_SOURCE_DIR "/usr/src/googletest" CACHE PATH "GoogleTest sources for the kernels-only build")
if(EXISTS "${MXLM_GTEST_SOURCE_DIR}/CMakeLists.txt")
  set(BUILD_GMOCK OFF CACHE BOOL "" FORCE)
  set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
  add_subdirectory("${MXLM_GTEST_SOURCE_DIR}" "${CMAKE_BINARY_DIR}/googletest" EXCLUDE_FROM_ALL)
  target_compile_options(gtest PRIVATE -w)  # third-party code: GCC 12 false positives (-Wrestrict)
  set(MXLM_GTEST_MAIN gtest_main)
elseif(NOT CMAKE_CROSSCOMPILING)
  find_package(GTest 1.12 CONFIG REQUIRED)
  set(MXLM_GTEST_MAIN GTest::gtest_main)
else()
  message(FATAL_ERROR "The cross build needs GoogleTest sources in ${MXLM_GTEST_SOURCE_DIR} (package googletest)")
endif()

# The KV cache and attention (runtime/kv_cache.cc, attention.cc, and the thread pool its store
# runs on) need only the kernels too: their tests run every attention path on NEON as well.
set(MXLM_KERNEL_TEST_SRCS
    ${CMAKE_SOURCE_DIR}/tests/f32_kernels_test.cc
    ${CMAKE_SOURCE_DIR}/tests/neon_kernels_test.cc
    ${CMAKE_SOURCE_DIR}/tests/quant_test.cc
    ${CMAKE_SOURCE_DIR}/tests/kv_cache_test.cc
    ${CMAKE_SOURCE_DIR}/runtime/kv_cache.cc
    ${CMAKE_SOURCE_DIR}/runtime/kv_fit.cc
    ${CMAKE_SOURCE_DIR}/runtime/attention.cc
    ${CMAKE_SOURCE_DIR}/runtime/thread_pool.cc)
add_executable(mxlm_kernel_tests ${MXLM_KERNEL_TEST_SRCS})
target_include_directories(mxlm_kernel_tests PRIVATE ${CMAKE_SOURCE_DIR}/runtime/include)
target_link_libraries(mxlm_kernel_tests PRIVATE mxlm_kernels ${MXLM_GTEST_MAIN})
add_test(NAME mxlm_kernel_tests COMMAND mxlm_kernel_tests)
set_tests_properties(mxlm_kernel_tests PROPERTIES TIMEOUT 900)
