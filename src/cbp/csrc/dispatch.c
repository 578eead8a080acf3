/* The instruction-set choice: which kernel table runs.

   At import cbp selects the default table (below), or the one named by
   CBP_ISA (cython_api.pyx checks the name and reports the choice). Every
   table computes the same bits, so the choice changes speed only. */
#include <string.h>

#include "isa.h"

typedef struct {
    const char *name;
    const cbp_kernels_f32 *f32;
    const cbp_kernels_f64 *f64;
    int (*supported)(void);
    /* may be the default on this CPU: a table whose loop bodies measured no
       faster than the next one's is compiled and selectable, but not chosen
       by itself */
    int (*preferred)(void);
} isa_entry;

static int always(void) { return 1; }

#if CBP_BUILD_X86_TARGETS
/* __builtin_cpu_supports also checks that the operating system saves the
   vector registers (XCR0), not only the CPUID bits. */
static int have_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

static int have_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}

/* The AVX-512 table (its reductions AVX-512, its sweeps AVX2) is the default
   on Intel CPUs only. On an Intel Xeon (family 6 model 167) it ran
   channel_stats in 0.82x-0.97x the time of the AVX2 table, the backprop sums
   0.88x-0.96x, the rest 0.97x-1.01x (benchmarks/README.md, "AVX-512 on an
   Intel Xeon"). On AMD it measured no faster: Zen 4 executes 512-bit
   vectors in two halves (NCHW moments 1.24x the time,
   benchmarks/snapshots/2026-12-01-csrc-ab.md), and on Zen 5 the table of
   AVX-512 sweeps lost on the backward from L3 (1.07x,
   snapshots/2026-12-02-isa-ab-zen5.md); this table is not yet measured
   there. */
static int intel(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_is("intel");
}
#endif

/* Widest first. */
static const isa_entry compiled[] = {
#if CBP_BUILD_X86_TARGETS
    {"avx512", &cbp_table_f32_avx512, &cbp_table_f64_avx512, have_avx512, intel},
    {"avx2", &cbp_table_f32_avx2, &cbp_table_f64_avx2, have_avx2, always},
#endif
    {CBP_BASELINE_NAME, &cbp_table_f32_base, &cbp_table_f64_base, always, always},
};

enum { N_COMPILED = sizeof(compiled) / sizeof(compiled[0]) };

const cbp_kernels_f32 *cbp_active_f32 = &cbp_table_f32_base;
const cbp_kernels_f64 *cbp_active_f64 = &cbp_table_f64_base;
static const char *active_name = CBP_BASELINE_NAME;

int cbp_isa_compiled_count(void) { return N_COMPILED; }

const char *cbp_isa_compiled_name(int i)
{
    return i >= 0 && i < N_COMPILED ? compiled[i].name : NULL;
}

int cbp_isa_count(void)
{
    int i, n = 0;
    for (i = 0; i < N_COMPILED; i++)
        n += compiled[i].supported() != 0;
    return n;
}

const char *cbp_isa_name(int i)
{
    int j;
    for (j = 0; j < N_COMPILED; j++) {
        if (compiled[j].supported() && i-- == 0)
            return compiled[j].name;
    }
    return NULL;
}

const char *cbp_isa_default(void)
{
    int j;
    for (j = 0; j < N_COMPILED; j++) {
        if (compiled[j].preferred() && compiled[j].supported())
            return compiled[j].name;
    }
    return CBP_BASELINE_NAME;
}

const char *cbp_isa_active(void) { return active_name; }

int cbp_isa_select(const char *name)
{
    int i;
    for (i = 0; i < N_COMPILED; i++) {
        if (strcmp(compiled[i].name, name) == 0) {
            if (!compiled[i].supported())
                return -2;
            cbp_active_f32 = compiled[i].f32;
            cbp_active_f64 = compiled[i].f64;
            active_name = compiled[i].name;
            return 0;
        }
    }
    return -1;
}
