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
    /* may be the default: a table whose loop bodies measured no faster than
       the next one's is compiled and selectable, but not chosen by itself */
    int preferred;
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
#endif

/* Widest first. AVX-512 runs the AVX2 loop bodies with wider vectors and
   measured slower than AVX2 on the NCHW moments (1.24x the time on
   32x256x56x56 float32, AMD EPYC Zen 4, 2026-12-01 A/B in
   benchmarks/snapshots/2026-12-01-csrc-ab.md), so it is not the default
   until its bodies are tuned. */
static const isa_entry compiled[] = {
#if CBP_BUILD_X86_TARGETS
    {"avx512", &cbp_table_f32_avx512, &cbp_table_f64_avx512, have_avx512, 0},
    {"avx2", &cbp_table_f32_avx2, &cbp_table_f64_avx2, have_avx2, 1},
#endif
    {CBP_BASELINE_NAME, &cbp_table_f32_base, &cbp_table_f64_base, always, 1},
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
        if (compiled[j].preferred && compiled[j].supported())
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
