/* plan — what a `--dry-run` prints: the work a tool will do, per tensor and
 * in total, the peak memory it will need and a time estimate, all computed
 * from the tensor shapes in a manifest before any data is read.
 *
 * Owns: the report format and the machine constants of the estimate
 * (PLAN_GFLOPS per thread for dense arithmetic, PLAN_MBS for streaming
 * bytes). The figures are estimates to plan a long job, not measurements;
 * `make bench` gives the measured rates of this machine. The same figures
 * are the --max-memory guard's (plan_done), so what --dry-run promises is
 * what the guard enforces.
 */
#ifndef QPIPE_PLAN_H
#define QPIPE_PLAN_H

#include <stdint.h>
#include <stdio.h>

#define PLAN_GFLOPS 10.0     /* dense f32/f64 arithmetic per thread (make bench measures ~20-30) */
#define PLAN_MBS    800.0    /* bytes moved through a pipe, MB/s */

typedef struct plan plan;

/* Start a plan for prog running on `threads` threads; `base_mem` is the
 * memory held whatever the tensor (buffers, a loaded model). */
plan *plan_new(const char *prog, int threads, uint64_t base_mem);
/* One tensor: what is done ("copy", "gptq int4 g128", ...), its working
 * memory, arithmetic (flops) and bytes read/written. */
void  plan_add(plan *p, const char *name, const char *action, uint64_t mem, double flops,
               uint64_t bytes_in, uint64_t bytes_out);
/* For a stream filter: one entry per input manifest entry, "copy" when the
 * filter's output manifest holds it unchanged, else `action` with the work
 * cost() estimates from its shape (rows, cols = the rest) and bytes. */
struct json_t;
void  plan_manifest_diff(plan *p, const struct json_t *in_manifest, const struct json_t *out_manifest,
                         const char *action,
                         void (*cost)(int64_t rows, int64_t cols, uint64_t *mem, double *flops));
/* Print the report to out (per tensor when verbose) and free p. */
void  plan_print(plan *p, FILE *out, int verbose);
void  plan_free(plan *p);
/* What a tool does with its plan before any work, and frees p:
 * --max-memory LIMIT (0 = none): dies naming the first tensor whose working
 * memory (plus the base) would pass LIMIT; --dry-run: prints the report to
 * stdout (per tensor with -v -v) and returns 1, the tool then stops.
 * Returns 0 when the tool should go on. */
int   plan_done(plan *p, uint64_t max_memory, int dry_run);

#endif
