/* source — a checkpoint opened for reading, whatever its format.
 *
 * Owns: the interface every checkpoint reader in formats/ implements, and
 * qsrc_open(), which looks at a path (file, HF model directory, archive,
 * sharded index) and hands it to the right reader.
 *
 * How to think of it: a source is a list of tensors (qs_tensor headers with a
 * single "data" part, or GGUF/quantized parts) in the order they are best read,
 * plus a stream header (carried files such as config.json and tokenizer
 * files, and meta such as "format"). Bytes are read with qsrc_read(): readers
 * that can seek accept any order; `sequential` readers (archives, pipes) need
 * tensors in list order and offsets increasing within a tensor.
 *
 * A reader returns a tensor's *logical* bytes: contiguous, row-major,
 * little-endian, whatever the file's layout (torch views, strides, offsets).
 *
 * Errors: -1 / NULL with a malloc'd one-line message in *errp naming the file
 * and the problem ("model.safetensors: header: data_offsets overlap at 'x'").
 */
#ifndef QPIPE_SOURCE_H
#define QPIPE_SOURCE_H

#include <stddef.h>
#include <stdint.h>
#include "qstream.h"

typedef struct qsrc qsrc;

typedef struct {
    /* Read n bytes of tensor idx starting at byte off of its data. */
    int  (*read)(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp);
    /* Optional: pointer to the bytes if they are mapped in memory (else NULL). */
    const void *(*map)(qsrc *s, int idx);
    void (*close)(qsrc *s);
} qsrc_ops;

struct qsrc {
    char            *path;        /* as given by the user, for messages */
    qs_header        header;      /* carried files + meta ("format": "safetensors", ...) */
    int              ntensors;
    qs_tensor       *tensors;     /* owned; ntensors entries */
    int              sequential;  /* 1: read tensors in order only */
    const qsrc_ops  *ops;
    void            *impl;        /* reader's private state */
};

/* Open any supported checkpoint: a .safetensors file, a sharded
 * *.safetensors.index.json, a PyTorch zip (.bin/.pt/.pth) or its index, a
 * .gguf, a HF model directory (prefers model.safetensors, like transformers),
 * or an archive (.tar, .tar.gz, .tar.zst, .zip) holding one of those. */
qsrc *qsrc_open(const char *path, char **errp);
int   qsrc_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp);
const void *qsrc_map(qsrc *s, int idx);      /* NULL when not mapped */
int   qsrc_find(const qsrc *s, const char *name);   /* index or -1 */
void  qsrc_close(qsrc *s);

/* Helpers for readers. */
qsrc *qsrc_new(const char *path);            /* empty source, header initialised */
int   qsrc_add_tensor(qsrc *s, const qs_tensor *t);  /* deep copy appended; -1 OOM */
char *qsrc_errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));  /* malloc'd message */

/* Per-format openers (each in its own file). They fill an opened qsrc. */
qsrc *safetensors_open(const char *path, char **errp);        /* formats/safetensors.c */
qsrc *safetensors_open_index(const char *path, char **errp);  /* sharded index */
qsrc *torch_open(const char *path, char **errp);              /* formats/torchzip.c */
qsrc *torch_open_index(const char *path, char **errp);        /* pytorch_model.bin.index.json */
qsrc *gguf_open(const char *path, char **errp);               /* formats/gguf.c */
/* A llama GGUF source seen with HF names, q/k rows in HF order and a
 * config.json (formats/gguf_hfview.c); other GGUFs are returned as they are.
 * Takes ownership of g (closed on error). */
qsrc *gguf_hf_view(qsrc *g, char **errp);
qsrc *archive_open(const char *path, char **errp);            /* formats/archive.c */

#endif
