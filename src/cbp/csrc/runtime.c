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

/* libgomp ends the whole process (exit code 1, "Thread creation failed")
   when it cannot start a team's threads, e.g. under a memory or thread-count
   limit. So before a caller first asks for a team larger than its largest so
   far, cbp starts the extra threads itself: they wait until all have
   started, as a team's would, then exit, and the caller runs with as many
   threads as could start. libgomp keeps a caller's earlier team threads in
   its pool, so only n - have new threads are needed. */
#if defined(_OPENMP) && !defined(_WIN32)
#include <pthread.h>
#include <stdlib.h>

struct probe_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open;
};

static void *probe_wait(void *arg)
{
    struct probe_gate *g = (struct probe_gate *)arg;
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

int cbp_probe_team(int n, int have)
{
    struct probe_gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    pthread_t *t;
    int k = 0, i;
    if (n <= have)
        return n;
    t = (pthread_t *)malloc((size_t)(n - have) * sizeof(pthread_t));
    if (t == NULL)
        return have;
    while (k < n - have && pthread_create(&t[k], NULL, probe_wait, &g) == 0)
        k++;
    pthread_mutex_lock(&g.mu);
    g.open = 1;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    for (i = 0; i < k; i++)
        pthread_join(t[i], NULL);
    free(t);
    return have + k;
}
#else
/* Serial builds start no threads; vcomp and libomp report failures on their own. */
int cbp_probe_team(int n, int have)
{
    (void)have;
    return n;
}
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
