/* The process-level facts behind show_config() and the fork guard. */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* dladdr, pthread_atfork under -std=c11 */
#endif

#include "cbp_runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

int cbp_have_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int cbp_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int cbp_omp_thread_limit(void)
{
#ifdef _OPENMP
    return omp_get_thread_limit();
#else
    return 1;
#endif
}

/* LLVM's libomp and MSVC's vcomp survive fork; only libgomp needs the guard. */
#if defined(_OPENMP) && defined(__GNUC__) && !defined(__clang__) && !defined(_WIN32)
#include <pthread.h>
static volatile int forked_child = 0;
static void mark_forked_child(void) { forked_child = 1; }
int cbp_install_fork_guard(void) { return pthread_atfork(NULL, NULL, mark_forked_child); }
#else
static volatile int forked_child = 0;
int cbp_install_fork_guard(void) { return 0; }
#endif

int cbp_forked_child(void) { return forked_child; }

#if defined(_OPENMP) && defined(_WIN32)
#include <windows.h>
static char omp_path[MAX_PATH + 1];
const char *cbp_openmp_library(void)
{
    HMODULE h = NULL;
    if (GetModuleHandleExA(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS
                               | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                           (LPCSTR)(void *)&omp_get_max_threads, &h)
        && GetModuleFileNameA(h, omp_path, MAX_PATH))
        return omp_path;
    return "";
}
#elif defined(_OPENMP)
#include <dlfcn.h>
const char *cbp_openmp_library(void)
{
    Dl_info info;
    if (dladdr((void *)&omp_get_max_threads, &info) && info.dli_fname)
        return info.dli_fname;
    return "";
}
#else
const char *cbp_openmp_library(void) { return ""; }
#endif

#ifndef CBP_COMPILE_ARGS
#define CBP_COMPILE_ARGS "unknown"
#endif

const char *cbp_compiler(void)
{
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#elif defined(_MSC_VER)
    return "msvc";
#else
    return "unknown";
#endif
}

const char *cbp_compile_args(void) { return CBP_COMPILE_ARGS; }
