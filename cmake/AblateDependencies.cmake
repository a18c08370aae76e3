# ablate_require_package(<cmake package> <debian package>
#                        [VERSION <min version>] [CONFIG] [COMPONENTS <c>...] [HINT <text>])
#
# find_package() for a dependency that must be there.  When it is missing, configuration stops
# with a message naming the Debian package that provides it and the project's installer,
# cmake/install-deps.sh.  <pkg>_FOUND, <pkg>_VERSION and <pkg>_DIR reach the caller's scope;
# imported targets are visible in the calling directory and below, as with find_package().
set(ABLATE_INSTALL_DEPS_SCRIPT "${CMAKE_CURRENT_LIST_DIR}/install-deps.sh")

function(ablate_require_package package debian_package)
  cmake_parse_arguments(PARSE_ARGV 2 arg "CONFIG" "VERSION;HINT" "COMPONENTS")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ablate_require_package: unknown arguments: ${arg_UNPARSED_ARGUMENTS}")
  endif()

  set(find_args)
  if(arg_VERSION)
    list(APPEND find_args ${arg_VERSION})
  endif()
  if(arg_CONFIG)
    list(APPEND find_args CONFIG)
  endif()
  if(arg_COMPONENTS)
    list(APPEND find_args COMPONENTS ${arg_COMPONENTS})
  endif()

  find_package(${package} ${find_args} QUIET)

  if(NOT ${package}_FOUND)
    set(wanted "${package}")
    if(arg_VERSION)
      string(APPEND wanted " >= ${arg_VERSION}")
    endif()
    set(hint "")
    if(arg_HINT)
      set(hint "\n${arg_HINT}")
    endif()
    message(FATAL_ERROR
      "ablate: required dependency ${wanted} was not found.\n"
      "Install the Debian package '${debian_package}':\n"
      "    sudo apt-get install ${debian_package}\n"
      "or install every dependency at once with:\n"
      "    bash ${ABLATE_INSTALL_DEPS_SCRIPT}\n"
      "If it is installed in a non-standard place, pass -D${package}_DIR=<dir> or add its "
      "prefix to CMAKE_PREFIX_PATH.${hint}")
  endif()

  set(version "")
  if(${package}_VERSION)
    set(version " ${${package}_VERSION}")
  endif()
  message(STATUS "ablate: found ${package}${version}")
  set(${package}_FOUND "${${package}_FOUND}" PARENT_SCOPE)
  set(${package}_VERSION "${${package}_VERSION}" PARENT_SCOPE)
endfunction()
