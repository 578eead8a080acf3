# Column reductions: per-column sums over the rows of a strided 2-D view,
# folded into channels. They serve NHWC, where a row holds all C channels of
# one pixel (and NCHW with no spatial axes), and the moments of NCHW short
# planes (7x7, 1-D signals), where a row is one image's run of a block of
# channels.
#
# The inner loop runs along a row with one accumulator per column, so it
# vectorizes with no reassociation. Accumulators are in the input type for at
# most ROW_FLUSH rows, then go into float64. For NHWC with small C, k = WIDEN/C
# consecutive pixels are fused into one row of width W = k * C, so the inner
# loop stays long; a channel then owns the k columns c, C + c, ... Rows are
# added four at a time where that measured faster, so each accumulator is
# loaded and stored once per four rows.

# The row loops are C: row_backprop, row_sum, row_shifted, their four-row
# twins, merge_block and block_shift in csrc/column_reduce.h.


# rows_*(..., rows, stride, ...): add `rows` (1, 4, or 8 for the moments) rows
# into the accumulators.

cdef inline void rows_backprop(const floating* x, const floating* dy, Py_ssize_t rows,
                               Py_ssize_t st, const floating* mh, floating* a, floating* b,
                               Py_ssize_t m) noexcept nogil:
    if rows == 4:
        rows4_backprop(x, dy, st, mh, a, b, m)
    else:
        row_backprop(x, dy, mh, a, b, m)


cdef inline void rows_sum(const floating* x, Py_ssize_t rows, Py_ssize_t st, floating* a,
                          Py_ssize_t m) noexcept nogil:
    if rows == 8:
        rows8_sum(x, st, a, m)
    elif rows == 4:
        rows4_sum(x, st, a, m)
    else:
        row_sum(x, a, m)


cdef inline void rows_shifted(const floating* x, Py_ssize_t rows, Py_ssize_t st,
                              const floating* shift, floating* a, floating* b,
                              Py_ssize_t m) noexcept nogil:
    if rows == 8:
        rows8_shifted(x, st, shift, a, b, m)
    elif rows == 4:
        rows4_shifted(x, st, shift, a, b, m)
    else:
        row_shifted(x, shift, a, b, m)


cdef inline Py_ssize_t rows_step(Py_ssize_t i, Py_ssize_t i_end, Py_ssize_t full,
                                  Py_ssize_t most) noexcept nogil:
    # rows to add at row i: 8 or 4 (at most `most`) when that many rows from i
    # are all full-width and inside the block, else 1
    if most >= 8 and i + 8 <= i_end and i + 8 <= full:
        return 8
    if most >= 4 and i + 4 <= i_end and i + 4 <= full:
        return 4
    return 1


cdef inline Py_ssize_t part_rows(Py_ssize_t full, Py_ssize_t parts,
                                 Py_ssize_t row_bytes) noexcept nogil:
    # rows in each of the `parts` parts of `full` rows row_bytes apart: one
    # fewer than full // parts where the parts would start a multiple of
    # PART_SKEW_BYTES apart (csrc/cbp_tuning.h). Shape only, so the same for
    # every thread count and instruction set.
    cdef Py_ssize_t q = full // parts
    if (q > 1 and row_bytes % PART_SKEW_BYTES != 0
            and (q * row_bytes) % PART_SKEW_BYTES == 0):
        return q - 1
    return q


cdef int column_backprop(const floating* x, const floating* dy, Py_ssize_t nrows,
                         Py_ssize_t st, Py_ssize_t m, Py_ssize_t last_m, Py_ssize_t full,
                         const floating* mh_w, bint checked, double* s1,
                         double* s2) noexcept nogil:
    # s1, s2 [m]: per column sum dy and sum dy * (x - mh_w) over nrows rows st
    # apart, m columns wide; rows at or past `full` (only the last
    # row of a row group can be short) are last_m wide. `full` is the row
    # group's, whatever columns of it this call sums, so that every column's
    # rows are added in the same order in any piece.
    # The q = part_rows(full, 4) first rows of each quarter of the full-width
    # rows go together: step i adds rows i, q + i, 2q + i and 3q + i, so each
    # accumulator is loaded and stored once per four rows while memory is read
    # as four long sequential streams per array (csrc/cbp_tuning.h). (Four
    # adjacent rows instead were up to 2.4x slower on rows of 1 KiB, where
    # they share a 4 KiB page.) The remaining rows go one at a time.
    cdef Py_ssize_t span = m * sizeof(floating) + 4096
    cdef char* raw = <char*>malloc(2 * span)
    cdef floating* ady
    cdef floating* adx
    cdef Py_ssize_t i = 0, i1, j
    cdef Py_ssize_t q = part_rows(full, 4, st * <Py_ssize_t>sizeof(floating))
    if raw == NULL:
        return -1
    ady = <floating*>cbp_place(raw, x, 0)
    adx = <floating*>cbp_place(raw + span, x, 1)
    for j in range(m):
        s1[j] = 0.0
        s2[j] = 0.0
        ady[j] = 0
        adx[j] = 0
    while i < q:
        i1 = min(q, i + ROW_FLUSH // 4)
        while i < i1:
            rows_backprop(x + i * st, dy + i * st, 4, q * st, mh_w, ady, adx, m)
            i = i + 1
        flush_sums(ady, adx, s1, s2, m)
    i = 4 * q
    while i < nrows:
        i1 = min(nrows, i + ROW_FLUSH)
        while i < i1:
            rows_backprop(x + i * st, dy + i * st, 1, st, mh_w, ady, adx,
                          m if i < full else last_m)
            i = i + 1
        flush_sums(ady, adx, s1, s2, m)
    free(raw)
    if floating is float and checked:
        return recheck_backprop(x, dy, nrows, st, m, last_m, mh_w, s1, s2)
    return 0


# The float32 range check of the column kernels per unit and column, in the
# re-run of a reduction whose channel totals failed the check (`checked`,
# _drivers.pxi): a column sum that is not finite, or a sum of products or
# squares below n * F32_TINY (where float32 products may have lost digits to
# underflow: each loses at most 2^-150), and the unit is summed again in
# float64 (csrc/wide.h), one pass for all such columns.

cdef inline bint column_ok(double s1, double s2, double n) noexcept nogil:
    return isfinite(s1) and isfinite(s2) and fabs(s2) >= n * F32_TINY


cdef inline bint columns_bad(const double* s1, const double* s2, Py_ssize_t W,
                            Py_ssize_t last_w, Py_ssize_t nrows) noexcept nogil:
    # whether some column fails the check; those at or past last_w have one row fewer
    return (any_bad(s1, s2, 1, last_w, nrows * F32_TINY) or
            any_bad(s1 + last_w, s2 + last_w, 1, W - last_w, (nrows - 1) * F32_TINY))


cdef int recheck_backprop(const floating* x, const floating* dy, Py_ssize_t nrows,
                          Py_ssize_t stride, Py_ssize_t W, Py_ssize_t last_w,
                          const floating* mh_w, double* s1, double* s2) noexcept nogil:
    # Columns whose products were all exactly 0 (dead channels) are exact as
    # they are; the rest of the failing ones are summed again in float64.
    cdef Py_ssize_t j, redo = 0
    cdef double* w
    cdef unsigned char* ok
    if not columns_bad(s1, s2, W, last_w, nrows):
        return 0
    w = <double*>malloc(3 * W * sizeof(double) + W)
    if w == NULL:
        return -1
    ok = <unsigned char*>(w + 3 * W)
    wide_exact_columns(x, dy, nrows, stride, W, last_w, mh_w, ok)
    for j in range(W):
        if not (ok[j] or column_ok(s1[j], s2[j], <double>(nrows - (j >= last_w)))):
            redo = redo + 1
    if redo:
        for j in range(W):
            w[j] = mh_w[j]
        wide_columns(x, dy, nrows, stride, W, last_w, w, w + W, w + 2 * W)
        for j in range(W):
            if not (ok[j] or column_ok(s1[j], s2[j],
                                       <double>(nrows - (j >= last_w)))):
                s1[j] = w[W + j]
                s2[j] = w[2 * W + j]
    free(w)
    return 0


cdef int recheck_moments(const floating* x, Py_ssize_t nrows, Py_ssize_t stride,
                         Py_ssize_t W, Py_ssize_t last_w, double* colstats) noexcept nogil:
    # colstats [2, W] (mean, M2). A failing column that is constant (equal
    # to its first row: a dead channel) has exactly that mean and M2 = 0;
    # the other failing ones get exact two-pass moments in float64.
    cdef Py_ssize_t j, redo = 0
    cdef double n
    cdef double* w
    cdef unsigned char* ok
    if not columns_bad(colstats, colstats + W, W, last_w, nrows):
        return 0
    w = <double*>malloc(3 * W * sizeof(double) + W)
    if w == NULL:
        return -1
    ok = <unsigned char*>(w + 3 * W)
    wide_exact_columns(x, <const floating*>NULL, nrows, stride, W, last_w, x, ok)
    for j in range(W):
        n = <double>(nrows - (j >= last_w))
        if not column_ok(colstats[j], colstats[W + j], n):
            if ok[j]:
                colstats[j] = <double>x[j]
                colstats[W + j] = 0.0
            else:
                redo = redo + 1
    if redo:
        for j in range(W):
            w[j] = 0.0
        wide_columns(x, <const floating*>NULL, nrows, stride, W, last_w, w, w + W, w + 2 * W)
        for j in range(W):
            w[j] = w[W + j] / <double>(nrows - (j >= last_w))
        wide_columns(x, <const floating*>NULL, nrows, stride, W, last_w, w, w + W, w + 2 * W)
        for j in range(W):
            n = <double>(nrows - (j >= last_w))
            if not (ok[j] or column_ok(colstats[j], colstats[W + j], n)):
                colstats[j] = w[j] + w[W + j] / n
                colstats[W + j] = max(0.0, w[2 * W + j] - w[W + j] * (w[W + j] / n))
    free(w)
    return 0


cdef int column_moments(const floating* x, Py_ssize_t nrows, Py_ssize_t stride,
                        Py_ssize_t W, Py_ssize_t last_w, Py_ssize_t full, Py_ssize_t parts,
                        bint four, bint checked, double* colstats) noexcept nogil:
    # colstats is [2, W]: per column (mean, M2); the count of column j is
    # nrows, or nrows - 1 for j >= last_w (only the last row is short: rows
    # at or past `full`). `full` and `four` are the row group's, as in
    # column_backprop, whatever columns of it this call sums.
    # Moments per block of ROW_FLUSH rows about a per-column shift, merged
    # into the running (mean, M2) with Chan's formula. The first block is
    # summed in two passes about its own mean (the second pass from cache);
    # every later block in one pass about the running mean of the rows
    # before it, which keeps memory streaming (two passes per block took up
    # to 2x the time of one read sweep). That shift costs no accuracy: a
    # block's float sums err by about gamma * (M2_b + nb * delta^2), delta
    # its mean's distance from the shift, and Chan's merge adds
    # nb * delta^2 * n_a / (n_a + nb) >= nb * delta^2 / 2 of it into the
    # total M2 (n_a >= nb rows came before), so the error stays below
    # 3 * gamma of the total M2 for any data.
    # With parts = 4 (or 8: moment_parts), the first blocks take their rows
    # from the four quarters (eighths) of the q = part_rows(full, parts)
    # first full rows, one from each per step as in column_backprop (quarters in NHWC:
    # 0.75x-0.95x the time with one thread, 0.9x-1.04x with two; NCHW short
    # planes, whose rows are far apart anyway: 1.07x-1.37x, so parts = 0
    # there); the remaining rows follow in blocks of their own.
    cdef Py_ssize_t span = W * sizeof(floating) + 4096
    cdef char* raw = <char*>malloc(3 * span)
    cdef floating* a
    cdef floating* b
    cdef floating* bh
    cdef Py_ssize_t i = 0, i1, r, j, k
    cdef double nb
    # Passes from memory (one-pass blocks, the first block's first pass):
    # four adjacent rows at a time where rows are apart or short (measured
    # 1.3x to 1.6x faster there); one at a time along contiguous rows of
    # >= 128 elements, where four short streams in one 4 KiB page starve the
    # hardware prefetcher (1.3x to 1.6x slower). NCHW short planes (parts =
    # 0), whose rows are runs in images far apart, go APART_ROWS (8) at a
    # time where that many remain, so that more cold streams load at once.
    # The first block's second pass re-reads it from cache: four rows at a
    # time (each accumulator loaded and stored once per four rows, 1.2x
    # faster). The caller decides `four` (row_moments_four).
    cdef Py_ssize_t q = (part_rows(full, parts, stride * <Py_ssize_t>sizeof(floating))
                         if parts > 0 else 0)
    cdef Py_ssize_t most = (APART_ROWS if parts == 0 else 4) if four else 1
    if raw == NULL:
        return -1
    a = <floating*>cbp_place(raw, x, 0)
    b = <floating*>cbp_place(raw + span, x, 1)
    bh = <floating*>cbp_place(raw + 2 * span, x, 2)
    for j in range(2 * W):
        colstats[j] = 0.0
    while i < q:
        i1 = min(q, i + ROW_FLUSH // parts)
        nb = <double>(parts * (i1 - i))
        for j in range(W):
            a[j] = 0
            b[j] = 0
        if i > 0:
            mean_shift(bh, colstats, W)
        else:
            for j in range(W):
                bh[j] = 0
            for r in range(i, i1):
                rows_sum(x + r * stride, parts, q * stride, bh, W)
            block_shift(bh, W, nb)
        for r in range(i, i1):
            rows_shifted(x + r * stride, parts, q * stride, bh, a, b, W)
        merge_block(a, b, bh, colstats, colstats + W, W, <double>(parts * i), nb)
        i = i1
    i = parts * q
    while i < nrows:
        i1 = min(nrows, i + ROW_FLUSH)
        nb = <double>(i1 - i)
        for j in range(W):
            a[j] = 0
            b[j] = 0
        if i > 0:
            mean_shift(bh, colstats, W)
            r = i
            while r < i1:
                k = rows_step(r, i1, full, most)
                rows_shifted(x + r * stride, k, stride, bh, a, b, W if r < full else last_w)
                r = r + k
        else:
            for j in range(W):
                bh[j] = 0
            r = i
            while r < i1:
                k = rows_step(r, i1, full, most)
                rows_sum(x + r * stride, k, stride, bh, W if r < full else last_w)
                r = r + k
            if i1 == nrows:
                block_shift(bh, last_w, nb)
                block_shift(bh + last_w, W - last_w, nb - 1)
            else:
                block_shift(bh, W, nb)
            r = i
            while r < i1:
                k = rows_step(r, i1, full, 4)
                rows_shifted(x + r * stride, k, stride, bh, a, b, W if r < full else last_w)
                r = r + k
        if i1 == nrows:
            merge_block(a, b, bh, colstats, colstats + W, last_w, <double>i, nb)
            merge_block(a + last_w, b + last_w, bh + last_w, colstats + last_w,
                        colstats + W + last_w, W - last_w, <double>i, nb - 1)
        else:
            merge_block(a, b, bh, colstats, colstats + W, W, <double>i, nb)
        i = i1
    free(raw)
    if floating is float and checked:
        return recheck_moments(x, nrows, stride, W, last_w, colstats)
    return 0


cdef inline bint row_moments_four(Py_ssize_t stride, Py_ssize_t W) noexcept nogil:
    # column_moments' first pass reads four adjacent rows at a time where rows
    # of W elements are apart or short
    return stride != W or W < 128


# Rows (NHWC, 2-D): units are (row group u, 64 bytes of its W = k * C
# columns), u-major. A piece is a run of one row group's columns; part holds
# each row group's per-column results [nu, 2, W], folded over the k pixels of
# a fused row and combined over the row groups in group order afterwards
# (_drivers.pxi). Thread 0's share starts at group 0, so it folds its whole
# groups into the channel totals as it goes, in that same order (row_fold),
# and the combine starts after them: with one thread part is never written.
# That saves part's trip through memory (1 MiB each way for 4096x1024, which
# the 32 MiB of x and dy evict from cache before the combine reads it).

cdef inline void row_group(Py_ssize_t R, Py_ssize_t C, Py_ssize_t k, Py_ssize_t nu,
                           Py_ssize_t u, Py_ssize_t* r0, Py_ssize_t* nrows,
                           Py_ssize_t* last_w) noexcept nogil:
    # first pixel row, fused rows and width of the last fused row of group u
    cdef Py_ssize_t r1 = (u + 1) * R // nu
    r0[0] = u * R // nu
    nrows[0] = ceil_div(r1 - r0[0], k)
    last_w[0] = (r1 - r0[0] - (nrows[0] - 1) * k) * C


cdef int row_fold(bint moments, Py_ssize_t R, Py_ssize_t C, Py_ssize_t nu, Py_ssize_t u,
                  const double* row, Py_ssize_t ca, Py_ssize_t cz, double* s1, double* s2,
                  double* cnt) noexcept nogil:
    # Row group u's results row ([2, W]) for channels ca..cz into the running
    # totals s1, s2 of the groups before it: folded over its k pixels, then
    # added (backprop sums) or merged (moments, cnt: the rows so far).
    cdef Py_ssize_t k = column_widen(C), W = column_widen(C) * C, j, c, r0, nrows, last_w
    cdef double gcnt, nb
    cdef double* grp
    if not moments:
        if k == 1:
            # the fold of one column is the column itself (0.0 + v adds
            # nothing but the sign of a zero, which the sum drops too)
            add_into(s1 + ca, s2 + ca, row + ca, row + W + ca, 1, cz - ca)
        else:
            add_folded(s1 + ca, s2 + ca, row + ca, row + W + ca, C, k, cz - ca)
        return 0
    row_group(R, C, k, nu, u, &r0, &nrows, &last_w)
    if k == 1:
        # one column per channel: its merge into an empty group is the column itself
        gcnt = <double>nrows
        merge_into(s1 + ca, s2 + ca, 1, row + ca, row + W + ca, 1, cz - ca, cnt[0], gcnt)
        cnt[0] = cnt[0] + gcnt
        return 0
    grp = <double*>malloc(2 * (cz - ca) * sizeof(double))
    if grp == NULL:
        return -1
    for c in range(2 * (cz - ca)):
        grp[c] = 0.0
    gcnt = 0.0
    for j in range(k):
        # columns at or past last_w (a multiple of C) have one row fewer
        nb = <double>(nrows - (1 if j * C >= last_w else 0))
        merge_into(grp, grp + (cz - ca), 1, row + j * C + ca, row + W + j * C + ca,
                   1, cz - ca, gcnt, nb)
        gcnt = gcnt + nb
    merge_into(s1 + ca, s2 + ca, 1, grp, grp + (cz - ca), 1, cz - ca, cnt[0], gcnt)
    cnt[0] = cnt[0] + gcnt
    free(grp)
    return 0


cdef int nhwc_backprop_piece(const floating* x, const floating* dy, Py_ssize_t R,
                             Py_ssize_t C, Py_ssize_t k, Py_ssize_t nu, Py_ssize_t u,
                             Py_ssize_t ja, Py_ssize_t jz, const floating* mh_w,
                             bint checked, double* out) noexcept nogil:
    # columns ja..jz of row group u into out ([2, W]: sum dy, sum dy * (x - mean_hi))
    cdef Py_ssize_t W = k * C, r0, nrows, last_w, m = jz - ja
    row_group(R, C, k, nu, u, &r0, &nrows, &last_w)
    return column_backprop(x + r0 * C + ja, dy + r0 * C + ja, nrows, W, m,
                           max(0, min(m, last_w - ja)), nrows if last_w == W else nrows - 1,
                           mh_w + ja, checked, out + ja, out + W + ja)


cdef int nhwc_moments_piece(const floating* x, Py_ssize_t R, Py_ssize_t C, Py_ssize_t k,
                            Py_ssize_t nu, Py_ssize_t u, Py_ssize_t ja, Py_ssize_t jz,
                            bint checked, double* out) noexcept nogil:
    # columns ja..jz of row group u into out ([2, W]: mean, M2)
    cdef Py_ssize_t W = k * C, r0, nrows, last_w, m = jz - ja, j
    cdef double* cs = out if m == W else <double*>malloc(2 * m * sizeof(double))
    if cs == NULL:
        return -1
    row_group(R, C, k, nu, u, &r0, &nrows, &last_w)
    if column_moments(x + r0 * C + ja, nrows, W, m, max(0, min(m, last_w - ja)),
                      nrows if last_w == W else nrows - 1, moment_parts(W, sizeof(floating)),
                      row_moments_four(W, W),
                      checked, cs) != 0:
        if cs != out:
            free(cs)
        return -1
    if cs != out:
        for j in range(m):
            out[ja + j] = cs[j]
            out[W + ja + j] = cs[m + j]
        free(cs)
    return 0


cdef int nhwc_share(bint moments, const floating* x, const floating* dy, Py_ssize_t R,
                    Py_ssize_t C, const floating* mh_w, bint checked, double* part, int nthreads,
                    int t, double* s1, double* s2, Py_ssize_t* head) noexcept nogil:
    # Thread t's share of the units. Thread 0 (s1 != NULL) sums its whole
    # row groups into its scratch row and folds each into s1, s2 (row_fold),
    # group 0 first; head[0] is how many it folded. Every other piece goes
    # into part.
    cdef Py_ssize_t nu = column_units(R), k = column_widen(C), W = column_widen(C) * C
    cdef Py_ssize_t gw = column_grain(sizeof(floating)), ncg = ceil_div(W, gw)
    cdef Py_ssize_t lo = share_lo(nu * ncg, nthreads, t), hi = share_lo(nu * ncg, nthreads, t + 1)
    cdef Py_ssize_t u, ja, jz, c, nh = 0
    cdef double cnt = 0.0
    cdef double* own = NULL
    cdef double* out
    cdef int failed = 0
    if s1 != NULL:
        own = <double*>malloc(2 * W * sizeof(double))
        for c in range(C):
            s1[c] = 0.0
            s2[c] = 0.0
    while lo < hi:
        u = lo // ncg
        ja = (lo - u * ncg) * gw
        jz = min(W, (min(hi, (u + 1) * ncg) - u * ncg) * gw)
        out = own if own != NULL and nh == u and ja == 0 and jz == W else part + 2 * u * W
        if moments:
            failed = nhwc_moments_piece(x, R, C, k, nu, u, ja, jz, checked, out)
        else:
            failed = nhwc_backprop_piece(x, dy, R, C, k, nu, u, ja, jz, mh_w, checked, out)
        if failed != 0:
            break
        if out == own:
            failed = row_fold(moments, R, C, nu, u, own, 0, C, s1, s2, &cnt)
            if failed != 0:
                break
            nh = nh + 1
        lo = min(hi, (u + 1) * ncg)
    free(own)
    if head != NULL:
        head[0] = nh
    return failed


cdef int nhwc_backprop_sums(const floating* x, const floating* dy, Py_ssize_t R,
                            Py_ssize_t C, const floating* mh_w, bint checked, double* part,
                            double* sdy, double* sdx, Py_ssize_t* head,
                            int nthreads) noexcept nogil:
    # part is [nu, 2, k * C], nu = column_units(R); one share per thread.
    # The head[0] first row groups' sums are in sdy, sdx already (nhwc_share).
    cdef int t, failed = 0
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        if nhwc_share(False, x, dy, R, C, mh_w, checked, part, nthreads, t,
                      sdy if t == 0 else NULL, sdx if t == 0 else NULL,
                      head if t == 0 else NULL) != 0:
            failed += 1
    return -1 if failed else 0


cdef int nhwc_moments(const floating* x, Py_ssize_t R, Py_ssize_t C, bint checked,
                      double* part, double* mean, double* m2, Py_ssize_t* head,
                      int nthreads) noexcept nogil:
    # part is [nu, 2, k * C] (mean, M2 per column); one share per thread.
    # The head[0] first row groups are merged into mean, m2 already.
    cdef int t, failed = 0
    for t in prange(nthreads, schedule='static', num_threads=nthreads):
        if nhwc_share(True, x, <const floating*>NULL, R, C, <const floating*>NULL, checked,
                      part, nthreads, t, mean if t == 0 else NULL, m2 if t == 0 else NULL,
                      head if t == 0 else NULL) != 0:
            failed += 1
    return -1 if failed else 0
