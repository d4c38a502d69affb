/* ref_source — feeding the float64 reference (ref_llama.h) from a checkpoint:
 * token files and a weight provider over a qsrc. Shared by test_llama and
 * test_stats; kept apart from ref_llama.h so the reference itself depends on
 * no qpipe code. */
#ifndef QPIPE_REF_SOURCE_H
#define QPIPE_REF_SOURCE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "dtype.h"
#include "source.h"

/* Token ids (uint32 LE) of a file; NULL if it cannot be opened. */
static uint32_t *read_u32(const char *path, int *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint32_t *v = malloc((size_t)len);
    *n = (int)(fread(v, 1, (size_t)len, f) / 4);
    fclose(f);
    return v;
}

/* ref_build's weight provider: tensor `name` of the qsrc ctx as doubles
 * (malloc'd), NULL when absent; aborts on a read error. */
static double *src_get_d(void *ctx, const char *name)
{
    qsrc *s = ctx;
    int i = qsrc_find(s, name);
    if (i < 0) return NULL;
    const qs_tensor *t = &s->tensors[i];
    int64_t n = qs_numel(t->ndim, t->shape);
    size_t nb = (size_t)qs_tensor_nbytes(t);
    void *buf = malloc(nb);
    float *f = malloc((size_t)n * sizeof *f);
    double *d = malloc((size_t)n * sizeof *d);
    char *err = NULL;
    if (qsrc_read(s, i, 0, buf, nb, &err) < 0) { free(err); abort(); }
    dtype_to_f32(t->dtype, buf, f, (size_t)n);
    for (int64_t k = 0; k < n; k++) d[k] = f[k];
    free(buf); free(f);
    return d;
}

#endif
