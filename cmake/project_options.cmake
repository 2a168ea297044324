# An interface target that carries the language standard, warnings and sanitizer flags for every target.
add_library(smartbroker_options INTERFACE)
target_compile_features(smartbroker_options INTERFACE cxx_std_23)
set(CMAKE_CXX_EXTENSIONS OFF)
target_compile_options(smartbroker_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast
  -Wnon-virtual-dtor -Woverloaded-virtual -Wformat=2)
if(SMARTBROKER_WERROR)
  target_compile_options(smartbroker_options INTERFACE -Werror)
endif()
if(SMARTBROKER_SANITIZE)
  # GCC 12's -Wmaybe-uninitialized reports false positives inside libstdc++ (std::function in <regex>) once
  # the sanitizers instrument the code; the plain build keeps the warning as an error.
  target_compile_options(smartbroker_options INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer
    -fno-sanitize-recover=undefined -Wno-maybe-uninitialized)
  target_link_options(smartbroker_options INTERFACE -fsanitize=address,undefined)
endif()
if(SMARTBROKER_TSAN)
  target_compile_options(smartbroker_options INTERFACE -fsanitize=thread -fno-omit-frame-pointer)
  target_link_options(smartbroker_options INTERFACE -fsanitize=thread)
endif()
