/* Every tuning constant of cbp's kernels, in two groups.

   ORDER constants decide which terms are added together in which order, and
   so the bits of every result: changing one changes the golden hashes
   (tests/golden_hashes.json; regenerate them in the same commit and say why
   in the README's change log). None of them depends on the thread count or
   the CPU, which is why results are bitwise identical for every num_threads
   and every instruction set.

   SCHEDULE constants only decide how the same sums are scheduled (cache
   blocks, row order of the elementwise sweeps, store kind): changing one
   changes speed, never a bit.

   "Chosen by" names the measurement behind each value: a benchmark snapshot
   in benchmarks/snapshots/, or the commit whose message quotes the A/B (see
   benchmarks/README.md). Measurements before 2026-12 were taken on a 2-core
   AMD EPYC (Zen 4) VM with a 32 MiB L3. */
#ifndef CBP_TUNING_H
#define CBP_TUNING_H

/* ---- ORDER: these change the bits ------------------------------------- */

/* Column (row) kernels: rows added into input-type accumulators before a
   float64 flush, i.e. terms per float32 partial sum. Trades error bound
   against flush cost (128 measured up to 1.1x faster on NHWC backprop sums
   but quadruples the float32 block). Chosen by: the initial design; README
   "Not yet" discusses 128. */
#define CBP_ROW_FLUSH 32

/* NCHW backprop sums of planes of at least SHORT_PLANE elements:
   independent accumulators per plane, and elements per block before the
   lanes go into float64 (BLOCK / LANES = 32 terms a lane). Shorter planes
   take RUN_LANES lanes (run_backprop). Chosen by: a7f41f4 (plane-by-plane
   backprop sums). */
#define CBP_PLANE_LANES 16
#define CBP_PLANE_BLOCK 512

/* NCHW moments: lanes and elements per corrected two-pass block (4 KiB, in
   L1 for the second pass). float64 uses 16 lanes: 32 doubles spill
   registers. Chosen by: e40bb9c (float32), b794d12 (float64). */
#define CBP_MOMENTS_LANES_F32 32
#define CBP_MOMENTS_BLOCK_F32 1024
#define CBP_MOMENTS_LANES_F64 16
#define CBP_MOMENTS_BLOCK_F64 512

/* NCHW short planes summed as columns: channels per block so that each image
   contributes a run of at least this many elements to a row. Chosen by:
   7303da7. */
#define CBP_RUN_ELEMS 1024

/* NCHW short planes summed as columns: rows per step of the moments' passes
   from memory (8 or 4; a block's last rows go four or one at a time). Each
   row is one image's run, far from the next image's, so a step's rows are
   separate streams that each start cold; eight at once took 0.87x-0.92x the
   time of four on 256x2048x7x7 (float32 and float64, one and two threads),
   0.90x on 32x1024x14x14 with one thread and 0.98x-0.99x in cache. Chosen
   by: the apart-rows A/B of the performance issue (benchmarks/README.md). */
#define CBP_APART_ROWS 8

/* NCHW column plans: at most this many elements per unit (more image groups
   on large batches). Chosen by: the initial design. */
#define CBP_UNIT_ELEMS 65536

/* Groups of the batch whose sums are kept apart: NCHW image groups (at most
   this many, and column plans at least this many channel blocks x groups)
   and row groups of the row kernels (at most this many): each group has its
   own [C, 2] float64 partial sums. Threads are balanced by the finer units
   inside the groups (_plan.pxi), so this only trades the partial sums'
   size (groups x C x 16 bytes) against shorter float64 running sums.
   Chosen with at most 2 threads (the initial design). */
#define CBP_MIN_UNITS 64

/* NCHW planes longer than PLANE_CHUNK elements are summed in ceil(S / CHUNK)
   near-equal chunks, each a unit of its own with its own float64 partial
   sums: a cache block of the fused passes holds few channels (3 planes of
   x and dy at 112x112, batch 32, in 12 MiB), too few units for 64 threads.
   NCHW short-plane column plans take at least COLUMN_PLAN_UNITS units
   (image group, channel) where the batch allows, for 128 threads. Chosen
   by: the balance target of the performance issue (plan_info, >= 0.9 at
   16 to 128 threads). */
#define CBP_PLANE_CHUNK 2048
#define CBP_COLUMN_PLAN_UNITS 1024

/* Column units have at least this many rows: a unit's fixed cost (zeroing,
   flushing and combining [C, 2] partial sums) is that of a few rows; 24-row
   units spent a quarter of the time on it (32x2048x7x7 NHWC). Chosen by:
   042b9b3. */
#define CBP_UNIT_ROWS 64

/* Column kernels fuse consecutive rows of a small C until a fused row has at
   least this many elements (long vectorizable inner loops). Chosen by: the
   initial design. */
#define CBP_WIDEN 64

/* NCHW moments of planes shorter than this run the column kernels (a
   plane's two passes and merge cost too much there). Backprop sums go plane
   by plane for every S >= CBP_SHORT_PLANE_BACKPROP, i.e. every S > 1
   (measured up to 1.25x faster on 7x7 and 14x14). Chosen by: a7f41f4. */
#define CBP_SHORT_PLANE 256
#define CBP_SHORT_PLANE_BACKPROP 2

/* NCHW moments of short planes of at least RUN_PLANE elements go plane by
   plane in memory order (run_shifted: each plane summed over RUN_LANES
   lanes about a per-channel shift, added in float64), in image blocks of
   1, 1, 2, 4, ... images whose shift is the running mean; shorter planes
   run the column kernels. The backprop sums of every short plane take the
   same RUN_LANES lanes and fold (run_backprop): the 16 lanes of the long
   planes, folded in float64, took up to 1.7x the time there. Chosen by:
   the plane-runs A/B of the performance issue (benchmarks/README.md). */
#define CBP_RUN_PLANE 32
#define CBP_RUN_LANES 8

/* Column backprop sums add four rows per step from the four quarters of a
   unit's rows (eight streams from memory) on rows of every width, so each
   float accumulator is loaded and stored once per four rows (no constant).
   On rows of 8 KiB or more, whose accumulators and shifts leave a 32 KiB
   L1d on every row, four rows per load took 0.54x-0.68x the time of one
   (float64 C = 1024 and 1536, 2-D and NHWC, one and two threads). On
   shorter rows from memory, against one row at a time (two streams): on a
   Zen 2 EPYC (16 MiB L3) 0.67x-0.91x the time with one thread (NHWC C = 3
   to 1024, 2-D 16384x1024 float32, 16384x256 float64) and 0.76x-0.97x with
   two; on the Zen 4 EPYC 1.19x-1.24x with one thread on rows of 4 KiB, but
   0.75x-0.86x with two. The order decides the bits, so it is one for every
   CPU. Chosen by: a1fbacd, 635b36c; the quarter-row and all-quarters A/Bs
   of the performance issue (benchmarks/README.md). */

/* The moments of rows take their rows from four quarters of a row group
   per step, and from eight eighths on rows of at least EIGHTH_ROW_BYTES:
   there the three accumulator rows (24 KiB and more) leave L1d on every
   step, and eight rows per accumulator load took 0.82x the time of four in
   a C loop over 100 MB (rows of 2048 and 4096 float32). The backprop sums
   keep quarters there: eighths (16 streams) took 1.44x-1.64x the time.
   Chosen by: the eighths A/B of the performance issue
   (benchmarks/README.md). */
#define CBP_EIGHTH_ROW_BYTES 8192

/* The quarters (eighths) of a row group hold full // parts rows each, one
   row fewer where that would put them a multiple of PART_SKEW_BYTES apart
   (and the rows are not): parts that far apart start every step in the same
   L1d set and at the same offset of a 4 KiB page, and on an Intel Xeon
   (family 6 model 167) such aligned quarters read from memory no faster
   than one row at a time (backprop sums 32x256x56x56 NHWC float32
   1.00x-1.04x its time, 8x32x32x64x64 float64 1.09x-1.15x), while one row
   fewer per quarter took 0.86x-0.94x the time of aligned quarters there
   (one and two threads) and the moments 0.81x-1.00x; unaligned shapes
   (33x256x53x53) already ran at 0.90x of one row at a time. Chosen by: the
   quarter-skew A/B of the performance issue (benchmarks/README.md). */
#define CBP_PART_SKEW_BYTES 4096

/* Sums of n float32 products or squares smaller than n times this are
   redone in float64 (wide.h): each term can lose at most 2^-150 to
   underflow, so a sum of at least n * 2^-100 has lost at most 2^-50 of
   itself. Exact zeros (zero dy, a constant channel) fail the check too and
   are then kept (their float32 sums are exact). Chosen by: the error bound
   (only data with |x - mean| below ~1e-16, or zero and constant channels,
   get past the first check). */
#define CBP_F32_TINY 0x1p-100

/* ---- SCHEDULE: speed only --------------------------------------------- */

/* Three sizes follow the last-level cache (LLC: the L3, or the L2 where
   there is no L3), read at import (caches.c) and derived by the macros
   below; they were measured on a 32 MiB L3, where they give 12, 16 and 32
   MiB. An LLC the operating system does not report is taken to be
   CBP_LLC_DEFAULT_BYTES (a laptop's; too small a guess costs little, too
   large one re-reads from DRAM).

   x (and dy) bytes per NCHW cache block of the fused passes, re-read from
   the LLC by the second sweep: 3/8 of it, leaving room for the output
   stream and the other cores. Runtime-settable (cache_bytes). Chosen by:
   2026-11-22-full.md (12 MiB on 32 MiB). */
#define CBP_LLC_DEFAULT_BYTES (8 * 1024 * 1024)

/* A reported L3 counts for at most LLC_PER_L2 times the L2s that share it
   (l2 * l3_shared_by / l2_shared_by). A virtual machine may report its
   host socket's whole L3 as shared by its own few vCPUs: a 2-vCPU Xeon VM
   (family 6 model 167) reports 480 MiB, while one thread's read bandwidth
   falls from 26 to 15 GiB/s between 64 and 128 MiB; the 480 MiB schedule
   took 1.14x-1.37x the time of a 64 MiB one on NCHW and NHWC backward,
   forward and dX of 100 MB, and a 128 MiB one up to 1.5x on 12-25 MB
   NHWC (32 and 64 MiB measured alike). 16 is above every real ratio known
   (a 3D V-Cache CCD has 12x: 96 MiB over 8 cores of 1 MiB), so only an L3
   claimed by fewer CPUs than share it is cut. Chosen by: the LLC A/B of
   the performance issue (benchmarks/README.md). */
#define CBP_LLC_PER_L2 16
#define CBP_CACHE_BLOCK_OF(llc) ((llc) / 8 * 3)
/* ... and at most as many bytes as 3/8 of the L2s of the call's team
   (L2_BLOCK_OF of each thread's share of its L2), so that where the L2 is
   large the second sweep re-reads a block from L2 rather than L3: on an
   Intel Xeon (family 6 model 167, 2 MiB L2, 64 MiB counted L3) a block of
   768 KiB per thread took 0.70x-0.78x the time of the LLC's 24 MiB for the
   NCHW backward of 8x64x28x28 to 32x64x28x28 and 0.77x-0.96x on
   32x256x28x28 and 32x256x56x56 (one and two threads, float32 and float64),
   the forward 0.77x-1.00x; 384 KiB per thread measured no better and
   1.5 MiB per thread with two threads worse. Chosen by: the L2-block A/B
   of the performance issue (benchmarks/README.md). */
#define CBP_L2_BLOCK_OF(l2) ((l2) / 8 * 3)

/* A call runs at most one thread per GRAIN_ELEMS elements of x: below that
   waking a thread costs more than it saves (and far more while other
   processes keep the cores busy). Chosen by: 1 against 2 threads on float32
   NCHW and NHWC, C = 64, 2K to 256K elements (AMD EPYC, 2026-12-01): about
   even up to 8K elements, with losses to 0.5x; from 32K elements 2 threads
   won 1.2x-2.0x but for NHWC backward (0.86x), and from 64K every case. */
#define CBP_GRAIN_ELEMS 16384

/* Work units that only decide who does what (a thread's share is a run of
   whole units; a sum never depends on them): the sweeps' units are runs of
   SWEEP_UNIT_ELEMS elements in memory order, the column reductions' units a
   row group's columns in COLUMN_UNIT_BYTES (one cache line). Small enough
   that 128 threads get near-equal shares (at least 16 units each at one
   thread per GRAIN_ELEMS), large enough that plan_info lists them cheaply.
   Chosen by: the balance target of the performance issue. */
#define CBP_SWEEP_UNIT_ELEMS 1024
#define CBP_COLUMN_UNIT_BYTES 64

/* A cache block of the fused NCHW passes holds at least BLOCK_UNITS units
   per thread of the team (10 keeps every thread within 10% of the busiest),
   more than the LLC-derived size where a large team needs it: a team that
   large spans several LLCs. Chosen by: the balance target of the
   performance issue. */
#define CBP_BLOCK_UNITS 10

/* Arrays of at most QUARTER_BYTES count as in cache for the NHWC sweeps:
   the dX sweep takes four quarters of a share from shares larger than this
   (SWEEP_QUARTER_ROW_BYTES) and, in cache, keeps one row at a time on rows
   of SWEEP_FOUR_W to SWEEP_QUARTER_W elements. Schedule only. */
#define CBP_QUARTER_BYTES 4194304

/* The NHWC sweeps step four rows per coefficient load on rows of at least
   SWEEP_QUARTER_W elements (and on arrays in cache, QUARTER_BYTES). Chosen
   by: a1fbacd, 635b36c. */
#define CBP_SWEEP_QUARTER_W 2048

/* Rows of at least SWEEP_QUARTER_ROW_BYTES take the four rows of a step
   from four quarters of a unit (four long streams per array): in the dX
   sweep where each thread's share exceeds QUARTER_BYTES, in the affine map
   beyond the LLC (SWEEP_QUARTER_OF). From 4 KiB the coefficient rows (16 KiB
   and more) no longer stay in L1d beside the streams. Against one row at a
   time, one and two threads: dX on rows of 4 KiB over the LLC 0.79x-0.90x
   the time (32x512x28x28 float64, 64x1024x14x14 float32), on 8 KiB of
   float64 0.69x-0.70x, forward 0.74x-0.78x there; in L3 (4096x1024,
   16x1024x14x14, 2048x1024 float64) dX 0.80x, backward 0.82x-0.93x, but the
   affine map 1.05x-1.15x, and dX on shares of 4 MiB or less 0.98x-1.54x;
   on rows of 2 KiB 1.17x-1.20x. Chosen by: the sweep-quarters A/B of the
   performance issue (benchmarks/README.md). */
#define CBP_SWEEP_QUARTER_ROW_BYTES 4096

/* The NHWC dX sweep of an array in cache (QUARTER_BYTES) steps four rows
   per coefficient load only on rows shorter than SWEEP_FOUR_W elements (or
   of at least SWEEP_QUARTER_W): its four-row loop has 16 address streams, more
   than x86-64's registers, and on rows of 256 to 1024 elements its spills
   cost more than the saved loads (one row at a time measured 0.57x-0.93x
   the time of dx and backward on 256x1024, 16x256x14x14, 4x512x14x14,
   float32 and float64; rows of 64 elements 1.31x). The affine sweep (8
   streams) keeps four rows. Chosen by: the sweep A/B of the performance
   issue (benchmarks/README.md). */
#define CBP_SWEEP_FOUR_W 256

/* NHWC sweeps fuse consecutive pixels into rows of at least this many bytes
   (coefficients tiled to match): a sweep is elementwise, so its row width
   changes no bit, only the calls per element. Rows of 2 KiB streamed from
   memory took 0.76x-0.84x the time of the forward and backward sweeps of
   rows of 256 bytes and 0.91x of 1 KiB (32x64x112x112, 8x32x32x64x64,
   32x256x56x56 NHWC), which had kept plain stores below 1 KiB; in cache
   0.96x-1.04x. Chosen by: the sweep-width A/B of the performance issue
   (benchmarks/README.md). */
#define CBP_SWEEP_ROW_BYTES 2048

/* NHWC sweeps over arrays larger than the LLC take long rows from four
   quarters of a unit (0.88x the time on 256x2048x7x7, 1.13x on 32x2048x7x7,
   which stays in L3). Chosen by: 635b36c. */
#define CBP_SWEEP_QUARTER_OF(llc) (llc)

/* Outputs of at least half the LLC are written with streaming stores: with
   x and dy beside them they outgrow it. NCHW planes of fewer bytes keep
   plain stores. Chosen by: 2026-11-22-streaming.md (16 MiB on 32 MiB). */
#define CBP_NT_STORE_OF(llc) ((llc) / 2)
/* NHWC and 2-D row sweeps stream from a third of the LLC, where x, dy and
   the output together outgrow it: 0.77x-0.91x the time of plain stores for
   backward, forward and dX of 12 MiB (16x1024x14x14, 32x2048x7x7 NHWC,
   4096x768, 16x2048x7x7 float64) with one thread, 0.75x-1.05x with two.
   NCHW planes keep half the LLC: at 12 MiB their streamed planes of 14x14
   took 1.3x-1.6x the time. Chosen by: the streaming A/B of the performance
   issue (benchmarks/README.md). */
#define CBP_NT_ROWS_OF(llc) ((llc) / 3)
#define CBP_NT_PLANE_BYTES 512
/* ... and NCHW planes of fewer elements keep plain stores too: a streamed
   plane costs a head, a tail and a call more than a plain one, which planes
   of 196 and 225 elements did not repay (14x14 float32 and float64, 15x15:
   plain stores took 0.58x-0.85x the time of streamed ones at 24-49 MiB,
   one thread; 16x16, 20x20, 24x24, 28x28, 50x50 and 90x90 planes took
   1.05x-1.27x with plain stores, 30x30 float32 0.97x-0.99x). Chosen by: the
   streaming A/B of the performance issue (benchmarks/README.md). */
#define CBP_NT_PLANE_ELEMS 256

/* plane_moments (NCHW planes of 256 elements or more) prefetches the data
   of its passes from memory this many bytes ahead, in 4 KiB blocks, from the
   detected L1d: as many blocks as leave a third of the L1d for the prefetched
   lines and the block being summed, at least one and at most four. That is
   one block on a 32 KiB L1d, where one block ahead measured fastest (half a
   block 1.02x-1.07x the time, four blocks 1.20x-1.43x; AMD EPYC Zen 4), and
   three on 48 KiB, where one block took 1.19x-1.43x the time of three (AMD
   EPYC Zen 5, 32x64x112x112, 32x256x56x56, 32x512x28x28 and 8x32x32x64x64
   NCHW, one thread; four and six blocks measured as three). An L1d the
   system does not report is taken as CBP_L1D_DEFAULT_BYTES. Chosen by: the
   prefetch A/B of the performance issue (benchmarks/README.md). */
#define CBP_L1D_DEFAULT_BYTES (32 * 1024)
#define CBP_MOMENTS_AHEAD_OF(l1d)                                                              \
    (4096 * ((l1d) / 12288 - 1 < 1 ? 1 : ((l1d) / 12288 - 1 > 4 ? 4 : (l1d) / 12288 - 1)))

/* Scratch rows stored to inside a loop over rows of x sit at
   512 + 1024 * slot bytes (mod 4 KiB) from the row being read, so loads do
   not wait on unrelated stores (4K aliasing; up to 2x measured). Chosen by:
   f8e28b4. */
#define CBP_SCRATCH_OFFSET 512
#define CBP_SCRATCH_SLOT 1024

#endif
