# Helpers every module folder uses to register its library and its tests.
#
#   sq_add_module(<name> SOURCES <files…> [DEPS <targets…>])
#       builds static library sq_<name> (public headers in include/shardq/), linked to the
#       project flags; the CLI links every registered module.
#   sq_add_test(<module> LABEL unit|mpi|gpu [SOURCES <files…>] [DEPS <targets…>]
#               [NP <n…>] [TIMEOUT <s>] [PROCESSORS <n>] [ARGS <args…>])
#       builds tests/test_<module>.c (or SOURCES) into test_<module> and registers it with
#       CTest.  `mpi` tests run under mpirun once per NP (default 1 2 4) with CK_FORK=no;
#       `gpu` tests run without fork and must exit 77 without a device.  An mpi test counts
#       NP processors for `ctest -j`; PROCESSORS gives a unit test that starts mpirun jobs
#       of its own the same weight.
include_guard(GLOBAL)

set(SQ_MPIRUN_FLAGS --allow-run-as-root --oversubscribe --bind-to none
    --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo
    CACHE STRING "Flags for mpirun in tests")
set(SQ_TEST_ENV "OMPI_MCA_rmaps_base_oversubscribe=1"
    "ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0:abort_on_error=0"
    "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")

function(sq_add_module name)
  cmake_parse_arguments(M "" "" "SOURCES;DEPS" ${ARGN})
  add_library(sq_${name} STATIC ${M_SOURCES})
  target_include_directories(sq_${name} PUBLIC ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(sq_${name} PUBLIC sq_flags ${M_DEPS})
  if(NOT name STREQUAL "core")
    target_link_libraries(sq_${name} PUBLIC sq_core)
  endif()
  set_property(GLOBAL APPEND PROPERTY SQ_MODULES sq_${name})
endfunction()

function(sq_add_test module)
  cmake_parse_arguments(T "" "LABEL;TIMEOUT;PROCESSORS" "SOURCES;DEPS;NP;ARGS" ${ARGN})
  if(NOT T_SOURCES)
    set(T_SOURCES ${PROJECT_SOURCE_DIR}/tests/test_${module}.c)
  endif()
  if(NOT T_LABEL)
    set(T_LABEL unit)
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set(exe test_${module})
  add_executable(${exe} ${T_SOURCES})
  target_include_directories(${exe} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${exe} PRIVATE sq_flags PkgConfig::CHECK ${T_DEPS})
  target_compile_definitions(${exe} PRIVATE
    SQ_SOURCE_DIR="${PROJECT_SOURCE_DIR}" SQ_BINARY_DIR="${PROJECT_BINARY_DIR}"
    SQ_SHARDQ_EXE="$<TARGET_FILE:shardq>" SQ_MPIEXEC="${MPIEXEC_EXECUTABLE}")
  set(env ${SQ_TEST_ENV} "SQ_MPIEXEC=${MPIEXEC_EXECUTABLE}")
  if(T_LABEL STREQUAL "mpi")
    if(NOT T_NP)
      set(T_NP 1 2 4)
    endif()
    foreach(np ${T_NP})
      add_test(NAME ${exe}_np${np}
               COMMAND ${MPIEXEC_EXECUTABLE} ${SQ_MPIRUN_FLAGS} -np ${np} $<TARGET_FILE:${exe}> ${T_ARGS})
      # PROCESSORS: CTest -j counts the ranks, so a multi-rank test does not share this
      # machine's 2 cores with other jobs (the liveness tests time peers out in seconds).
      set_tests_properties(${exe}_np${np} PROPERTIES LABELS mpi TIMEOUT ${T_TIMEOUT}
                           PROCESSORS ${np} ENVIRONMENT "${env};CK_FORK=no")
    endforeach()
  else()
    add_test(NAME ${exe} COMMAND $<TARGET_FILE:${exe}> ${T_ARGS})
    set(props LABELS ${T_LABEL} TIMEOUT ${T_TIMEOUT})
    if(T_PROCESSORS)
      # a test that starts mpirun jobs of its own
      list(APPEND props PROCESSORS ${T_PROCESSORS})
    endif()
    if(T_LABEL STREQUAL "gpu")
      list(APPEND props SKIP_RETURN_CODE 77)
      list(APPEND env "CK_FORK=no")
    endif()
    set_tests_properties(${exe} PROPERTIES ${props} ENVIRONMENT "${env}")
  endif()
endfunction()
