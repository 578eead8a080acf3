/* What cbp asks of the OpenMP runtime and of the process (runtime.c). */
#ifndef CBP_RUNTIME_H
#define CBP_RUNTIME_H

/* 1 when built with OpenMP, else 0 (then every kernel runs on one thread). */
int cbp_have_openmp(void);
/* omp_get_max_threads(), or 1 without OpenMP. */
int cbp_omp_max_threads(void);
/* omp_get_thread_limit() (OMP_THREAD_LIMIT; INT_MAX when unset), or 1 without OpenMP. */
int cbp_omp_thread_limit(void);

/* GNU libgomp is not fork-safe: a forked child's first parallel region with
   more than one thread waits forever for the parent's pool threads. After
   cbp_install_fork_guard(), cbp_forked_child() is 1 in such a child, and the
   kernels then run on one thread. Returns 0, or pthread_atfork's error. */
int cbp_install_fork_guard(void);
int cbp_forked_child(void);

/* How many threads a team of n can have, given that the caller has run a
   team of `have` before: starts the n - have extra threads once and lets
   them exit (runtime.c says why). */
int cbp_probe_team(int n, int have);

/* The file of the OpenMP runtime the kernels call, or "" when unknown. */
const char *cbp_openmp_library(void);

/* The CPU's data caches as the operating system reports them (caches.c):
   size[i] in bytes of level i + 1 (L1d, L2, L3; 0 = unknown) and shared[i]
   the logical CPUs sharing one such cache (0 = unknown); source names where
   they were read ("sysfs", "sysconf", "sysctl",
   "GetLogicalProcessorInformationEx", or "none"). */
typedef struct {
    long long size[3];
    int shared[3];
    const char *source;
} cbp_caches;
void cbp_detect_caches(cbp_caches *c);

/* The compiler and the flags the kernels were built with. */
const char *cbp_compiler(void);
const char *cbp_compile_args(void);

#endif
