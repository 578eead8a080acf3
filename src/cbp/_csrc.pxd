# cbp's C sources (csrc/) as the Cython drivers see them. Private: the public
# C-level interface is cython_api.pxd.
#
# The kernels exist once per element type; `void*` below stands for a pointer
# to that type (float or double). The C macros behind these names pick the
# float or double kernel by the type the pointer really has (C11 _Generic),
# so one declaration serves both, and the C compiler checks every argument
# against the real prototype (csrc/kernel_table.h).

cdef extern from "cbp_tuning.h":
    # ORDER constants (they decide the summation order, and so the bits)
    enum:
        ROW_FLUSH "CBP_ROW_FLUSH"
        RUN_ELEMS "CBP_RUN_ELEMS"
        APART_ROWS "CBP_APART_ROWS"
        UNIT_ELEMS "CBP_UNIT_ELEMS"
        MIN_UNITS "CBP_MIN_UNITS"
        PLANE_CHUNK "CBP_PLANE_CHUNK"
        COLUMN_PLAN_UNITS "CBP_COLUMN_PLAN_UNITS"
        UNIT_ROWS "CBP_UNIT_ROWS"
        WIDEN "CBP_WIDEN"
        SHORT_PLANE "CBP_SHORT_PLANE"
        SHORT_PLANE_BACKPROP "CBP_SHORT_PLANE_BACKPROP"
        RUN_PLANE "CBP_RUN_PLANE"
        SWEEP_QUARTER_W "CBP_SWEEP_QUARTER_W"
        SWEEP_QUARTER_ROW_BYTES "CBP_SWEEP_QUARTER_ROW_BYTES"
        QUARTER_BYTES "CBP_QUARTER_BYTES"
        EIGHTH_ROW_BYTES "CBP_EIGHTH_ROW_BYTES"
        PART_SKEW_BYTES "CBP_PART_SKEW_BYTES"
    double F32_TINY "CBP_F32_TINY"
    # SCHEDULE constants (speed only)
    enum:
        LLC_DEFAULT_BYTES "CBP_LLC_DEFAULT_BYTES"
        LLC_PER_L2 "CBP_LLC_PER_L2"
        SWEEP_UNIT_ELEMS "CBP_SWEEP_UNIT_ELEMS"
        COLUMN_UNIT_BYTES "CBP_COLUMN_UNIT_BYTES"
        BLOCK_UNITS "CBP_BLOCK_UNITS"
        GRAIN_ELEMS "CBP_GRAIN_ELEMS"
        NT_PLANE_BYTES "CBP_NT_PLANE_BYTES"
        NT_PLANE_ELEMS "CBP_NT_PLANE_ELEMS"
        SWEEP_FOUR_W "CBP_SWEEP_FOUR_W"
        SWEEP_ROW_BYTES "CBP_SWEEP_ROW_BYTES"

cdef extern from "cbp_tuning.h" nogil:
    # the sizes that follow the last-level cache
    Py_ssize_t CACHE_BLOCK_OF "CBP_CACHE_BLOCK_OF"(Py_ssize_t llc) noexcept
    Py_ssize_t L2_BLOCK_OF "CBP_L2_BLOCK_OF"(Py_ssize_t l2) noexcept
    Py_ssize_t SWEEP_QUARTER_OF "CBP_SWEEP_QUARTER_OF"(Py_ssize_t llc) noexcept
    Py_ssize_t NT_STORE_OF "CBP_NT_STORE_OF"(Py_ssize_t llc) noexcept
    Py_ssize_t NT_ROWS_OF "CBP_NT_ROWS_OF"(Py_ssize_t llc) noexcept

cdef extern from "cbp_kernels.h" nogil:
    # NCHW planes (csrc/plane_reduce.h)
    void plane_backprop "cbp_plane_backprop"(const void* x, const void* dy, Py_ssize_t S,
                                             const void* mh, double* sum_dy,
                                             double* sum_dyxc) noexcept
    void plane_moments "cbp_plane_moments"(const void* x, Py_ssize_t S, double* count,
                                           double* mean, double* m2) noexcept
    Py_ssize_t cbp_moments_ahead
    void cbp_set_moments_ahead(long long l1d_bytes) noexcept
    void run_sum "cbp_run_sum"(const void* x, Py_ssize_t S, Py_ssize_t nc, double* a) noexcept
    void run_shifted "cbp_run_shifted"(const void* x, Py_ssize_t S, Py_ssize_t nc,
                                       const void* sh, double* a, double* b) noexcept
    void run_backprop "cbp_run_backprop"(const void* x, const void* dy, Py_ssize_t S,
                                         Py_ssize_t nc, const void* mh, double* o) noexcept
    # rows into per-column accumulators (csrc/column_reduce.h)
    void row_backprop "cbp_row_backprop"(const void* x, const void* dy, const void* mh,
                                         void* a, void* b, Py_ssize_t m) noexcept
    void rows4_backprop "cbp_rows4_backprop"(const void* x, const void* dy, Py_ssize_t st,
                                             const void* mh, void* a, void* b,
                                             Py_ssize_t m) noexcept
    void row_sum "cbp_row_sum"(const void* x, void* a, Py_ssize_t m) noexcept
    void rows4_sum "cbp_rows4_sum"(const void* x, Py_ssize_t st, void* a, Py_ssize_t m) noexcept
    void row_shifted "cbp_row_shifted"(const void* x, const void* shift, void* a, void* b,
                                       Py_ssize_t m) noexcept
    void rows4_shifted "cbp_rows4_shifted"(const void* x, Py_ssize_t st, const void* shift,
                                           void* a, void* b, Py_ssize_t m) noexcept
    void rows8_sum "cbp_rows8_sum"(const void* x, Py_ssize_t st, void* a, Py_ssize_t m) noexcept
    void rows8_shifted "cbp_rows8_shifted"(const void* x, Py_ssize_t st, const void* shift,
                                           void* a, void* b, Py_ssize_t m) noexcept
    void merge_block "cbp_merge_block"(const void* a, const void* b, const void* shift,
                                       double* mean, double* m2, Py_ssize_t m, double n_a,
                                       double nb) noexcept
    void block_shift "cbp_block_shift"(void* a, Py_ssize_t m, double nb) noexcept
    void mean_shift "cbp_mean_shift"(void* s, const double* mean, Py_ssize_t m) noexcept
    void flush_sums "cbp_flush_sums"(void* a, void* b, double* s1, double* s2,
                                     Py_ssize_t m) noexcept
    # elementwise sweeps (csrc/sweep.h); dy == NULL: the affine map
    void rows_sweep "cbp_rows_sweep"(const void* x, const void* dy, void* out, int rows,
                                     Py_ssize_t st, Py_ssize_t m, const void* mh,
                                     const void* a, const void* b, const void* k) noexcept
    void rows_sweep_nt "cbp_rows_sweep_nt"(const void* x, const void* dy, void* out, int rows,
                                           Py_ssize_t st, Py_ssize_t m, const void* mh,
                                           const void* a, const void* b,
                                           const void* k) noexcept
    void flat_sweep_nt "cbp_flat_sweep_nt"(const void* x, const void* dy, void* out,
                                           Py_ssize_t n, Py_ssize_t W, Py_ssize_t j,
                                           const void* mh, const void* a, const void* b,
                                           const void* k) noexcept
    void run_sweep "cbp_run_sweep"(const void* x, const void* dy, void* out, Py_ssize_t nc,
                                   Py_ssize_t S, const void* mh, const void* a, const void* b,
                                   const void* k) noexcept
    void run_sweep_nt "cbp_run_sweep_nt"(const void* x, const void* dy, void* out,
                                         Py_ssize_t nc, Py_ssize_t S, const void* mh,
                                         const void* a, const void* b,
                                         const void* k) noexcept
    # float64 arithmetic for float32 data out of range (csrc/wide.h)
    void wide_sums "cbp_wide_sums"(const void* x, const void* dy, Py_ssize_t n, Py_ssize_t st,
                                   double m, double* sa, double* sb) noexcept
    void wide_moments "cbp_wide_moments"(const void* x, Py_ssize_t n, Py_ssize_t st,
                                         double* mean, double* m2) noexcept
    void wide_columns "cbp_wide_columns"(const void* x, const void* dy, Py_ssize_t nrows,
                                         Py_ssize_t stride, Py_ssize_t w, Py_ssize_t last_w,
                                         const double* m, double* sa, double* sb) noexcept
    void wide_rows_sweep "cbp_wide_rows_sweep"(const void* x, const void* dy, void* out,
                                               Py_ssize_t m, const double* mh, const double* a,
                                               const double* b, const double* k) noexcept
    void wide_run_sweep "cbp_wide_run_sweep"(const void* x, const void* dy, void* out,
                                             Py_ssize_t nc, Py_ssize_t S, const double* mh,
                                             const double* a, const double* b,
                                             const double* k) noexcept
    bint wide_exact "cbp_wide_exact"(const void* x, const void* dy, Py_ssize_t n,
                                     const void* m) noexcept
    void wide_exact_columns "cbp_wide_exact_columns"(const void* x, const void* dy,
                                                     Py_ssize_t nrows, Py_ssize_t stride,
                                                     Py_ssize_t w, Py_ssize_t last_w,
                                                     const void* m,
                                                     unsigned char* ok) noexcept

    # helpers (csrc/cbp_common.h, csrc/checks.c)
    bint cbp_f32_sum_ok(double s) noexcept
    bint cbp_f32_coef_ok(double c) noexcept
    bint any_bad "cbp_any_bad"(const double* s1, const double* s2, Py_ssize_t st,
                               Py_ssize_t m, double tiny) noexcept
    void chan_merge "cbp_chan_merge"(double* n_a, double* mean_a, double* m2_a, double n_b,
                                     double mean_b, double m2_b) noexcept
    void* cbp_place(void* raw, const void* anchor, int slot) noexcept
    enum: COEF_PAD "CBP_COEF_PAD"
    enum: COEF_EXT "CBP_COEF_EXT"
    void merge_into "cbp_merge_into"(double* mean, double* m2, Py_ssize_t sd,
                                     const double* bmean, const double* bm2, Py_ssize_t ss,
                                     Py_ssize_t m, double n_a, double n_b) noexcept
    void add_into "cbp_add_into"(double* s1, double* s2, const double* v1, const double* v2,
                                 Py_ssize_t sv, Py_ssize_t m) noexcept
    void add_folded "cbp_add_folded"(double* s1, double* s2, const double* v1,
                                     const double* v2, Py_ssize_t C, Py_ssize_t k,
                                     Py_ssize_t m) noexcept
    void store_fence "cbp_store_fence"() noexcept
    const int CBP_HAVE_NT

    # instruction sets (csrc/dispatch.c)
    int cbp_isa_count() noexcept
    const char* cbp_isa_name(int i) noexcept
    const char* cbp_isa_default() noexcept
    const char* cbp_isa_active() noexcept
    int cbp_isa_select(const char* name) noexcept
    int cbp_isa_compiled_count() noexcept
    const char* cbp_isa_compiled_name(int i) noexcept

cdef extern from "cbp_runtime.h" nogil:
    int cbp_have_openmp() noexcept
    int cbp_omp_max_threads() noexcept
    int cbp_omp_thread_limit() noexcept
    int cbp_install_fork_guard() noexcept
    int cbp_forked_child() noexcept
    int cbp_probe_team(int n, int have) noexcept
    const char* cbp_openmp_library() noexcept
    ctypedef struct cbp_caches:
        long long size[3]
        int shared[3]
        const char* source
    void cbp_detect_caches(cbp_caches* c) noexcept
    const char* cbp_compiler() noexcept
    const char* cbp_compile_args() noexcept
