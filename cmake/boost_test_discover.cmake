# Registers every Boost.Test case of a test executable as its own ctest test (like gtest_discover_tests):
# after each build the binary lists its cases and a generated file adds one add_test per case.
function(smartbroker_discover_tests target)
  cmake_parse_arguments(ARG "" "LABEL" "PROPERTIES" ${ARGN})
  set(out "${CMAKE_CURRENT_BINARY_DIR}/${target}_cases.cmake")
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND ${CMAKE_COMMAND} -DTEST_BINARY=$<TARGET_FILE:${target}> -DOUT=${out} -DLABEL=${ARG_LABEL}
            "-DPROPS=${ARG_PROPERTIES}"
            -P ${PROJECT_SOURCE_DIR}/cmake/boost_test_list.cmake
    BYPRODUCTS ${out} VERBATIM)
  # Until the first build lists the cases, an empty list keeps ctest from failing on a missing file.
  if(NOT EXISTS ${out})
    file(WRITE ${out} "")
  endif()
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${out})
endfunction()
