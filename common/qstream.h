/* qstream — the tensor stream every qpipe filter reads and writes.
 *
 * Owns: the wire format (docs/qstream.md is its spec, version QS_VERSION), a
 * reader that verifies every frame's XXH3-64 and the whole-stream hash, and a
 * writer that cuts tensor data into checksummed chunks of bounded size.
 *
 * How to think of it: a stream is a header (provenance, carried files such as
 * config.json, free-form metadata, a manifest of the tensors to come), then for
 * each tensor a header and its bytes, then an end record. A tensor's bytes are
 * the concatenation of its parts (a plain tensor has one part, "data"; a
 * quantized one has e.g. "codes", "scales", "zeros", "g_idx"), each part
 * row-major little-endian. Readers consume bytes sequentially, so a filter that
 * works on row blocks never holds a whole tensor.
 *
 * Errors: functions return -1 (or NULL) and leave a one-line message in
 * qs_reader_error()/qs_writer_error() that names the tensor and byte offset;
 * after a write error the writer is stuck in error (sticky) and writes nothing
 * more. The library never prints and never exits.
 */
#ifndef QPIPE_QSTREAM_H
#define QPIPE_QSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "dtype.h"

#define QS_VERSION       1
#define QS_MAGIC         "qstream"          /* first object: msgpack fixstr "qstream" */
#define QS_MAX_DIMS      8
#define QS_MAX_PARTS     8
#define QS_DEFAULT_CHUNK (4u << 20)         /* 4 MiB of tensor bytes per chunk frame */
#define QS_MAX_CHUNK     (64u << 20)        /* readers refuse larger chunks */
#define QS_MAX_INFO      (256u << 20)       /* readers refuse larger header/info blobs */

/*-*** Tensors ***/

/* One part of a tensor's bytes. */
typedef struct {
    char     role[16];                 /* "data", "codes", "scales", "zeros", "g_idx", "mask", ... */
    qdtype   dtype;
    int      ndim;
    int64_t  shape[QS_MAX_DIMS];
    uint64_t nbytes;                   /* = numel(shape) * dtype_size(dtype) */
} qs_part;

/* A tensor as it travels. `dtype`/`shape` are the logical (dequantized) view;
 * `parts` is what is on the wire. `attrs` (may be NULL) holds everything else:
 * "quant" (the grid descriptor, see docs/qstream.md), "mask", "qmix", ... The
 * tensor owns `name` and one reference to `attrs`. */
typedef struct {
    char    *name;
    qdtype   dtype;
    int      ndim;
    int64_t  shape[QS_MAX_DIMS];
    int      nparts;
    qs_part  parts[QS_MAX_PARTS];
    json_t  *attrs;
} qs_tensor;

/* Fill t as a plain tensor with one "data" part (copies name). Can't fail
 * except for out-of-memory / too many dims (returns -1). */
int      qs_tensor_init(qs_tensor *t, const char *name, qdtype dtype, int ndim, const int64_t *shape);
/* Add a part; returns its index, -1 if full or a bad shape. */
int      qs_tensor_add_part(qs_tensor *t, const char *role, qdtype dtype, int ndim, const int64_t *shape);
void     qs_tensor_clear(qs_tensor *t);            /* frees name/attrs; t may be reused */
int      qs_tensor_copy(qs_tensor *dst, const qs_tensor *src);  /* deep copy; -1 on OOM */
uint64_t qs_tensor_nbytes(const qs_tensor *t);     /* sum of parts */
/* -1 on overflow, a negative dim, or an empty tensor whose other dims multiply past 2^24 */
int64_t  qs_numel(int ndim, const int64_t *shape);
/* Index of the part with this role, or -1. */
int      qs_tensor_part(const qs_tensor *t, const char *role);
/* Rows/columns of the logical view as a matrix: rows = shape[0], cols = the rest (1-D: 1 x n). */
int64_t  qs_tensor_rows(const qs_tensor *t);
int64_t  qs_tensor_cols(const qs_tensor *t);

/*-*** Stream header ***/

/* A file carried through the stream (config.json, tokenizer.json, ...). */
typedef struct {
    char    *name;                     /* relative path, e.g. "config.json" */
    uint8_t *data;
    size_t   len;
} qs_file;

typedef struct {
    int      version;                  /* QS_VERSION when written by us */
    json_t  *provenance;               /* array of {"prog","version","args":[...]} */
    json_t  *meta;                     /* object: free-form metadata ("kind": "model"|"stats", ...) */
    json_t  *manifest;                 /* array of {"name","dtype","shape",["nbytes"]}, may be empty */
    int      nfiles;
    qs_file *files;
} qs_header;

void     qs_header_init(qs_header *h);             /* empty header: version, [] provenance, {} meta */
void     qs_header_clear(qs_header *h);
int      qs_header_copy(qs_header *dst, const qs_header *src);
/* Append {"prog","version","args"} to provenance. -1 on OOM. */
int      qs_header_add_provenance(qs_header *h, const char *prog, const char *version, int argc, char **argv);
/* Add (copy) a carried file; replaces one of the same name. -1 on OOM. */
int      qs_header_add_file(qs_header *h, const char *name, const void *data, size_t len);
const qs_file *qs_header_file(const qs_header *h, const char *name);  /* NULL if absent */
/* Append a manifest entry for t (name, dtype, shape, parts' nbytes, and the
 * attrs "quant" and "alias" that sinks need before the data). */
int      qs_header_manifest_add(qs_header *h, const qs_tensor *t);

/*-*** Reader ***/

typedef struct qs_reader qs_reader;

/* Read a stream from fd; `label` names it in messages (e.g. "stdin",
 * "cal.qs"). Reads and verifies the header. NULL on error with *errp set to
 * a malloc'd message (caller frees). */
qs_reader *qs_reader_open_fd(int fd, const char *label, char **errp);
qs_reader *qs_reader_open_path(const char *path, char **errp);   /* "-" = stdin */
const qs_header *qs_reader_header(const qs_reader *r);
/* Advance to the next tensor, skipping unread bytes of the current one (they
 * are still verified). 1 = a tensor (t points into the reader, valid until the
 * next call), 0 = clean end of stream (end record verified), -1 = error. */
int      qs_reader_next(qs_reader *r, const qs_tensor **t);
/* Read exactly n bytes of the current tensor's data (parts in order). Returns
 * 0, or -1 on error (including asking past the tensor's end). */
int      qs_reader_read(qs_reader *r, void *buf, size_t n);
/* Zero-copy variant: *p points at up to max bytes of the current chunk, valid
 * until the next reader call. Returns the count (0 at the tensor's end) or -1. */
int64_t  qs_reader_peek(qs_reader *r, const void **p, size_t max);
uint64_t qs_reader_remaining(const qs_reader *r);    /* unread bytes of the current tensor */
/* Read the whole current tensor (all remaining bytes) into a malloc'd buffer. */
void    *qs_reader_read_all(qs_reader *r, size_t *len);
const char *qs_reader_error(const qs_reader *r);
uint64_t qs_reader_offset(const qs_reader *r);       /* bytes consumed so far */
/* Random access, for a stream in a regular file read once through already
 * (that pass verified the counts and the whole-stream hash): the byte offset
 * of the current tensor's header frame, recorded in that pass, and a seek
 * back to it. After qs_reader_seek(r, offset, index), where index is the
 * tensor's 0-based position in the stream, qs_reader_next returns that tensor;
 * every frame read is still checksummed, the end record is no longer checked.
 * -1 if the input is not a regular file (a pipe) or the offset is past its end. */
uint64_t qs_reader_tensor_offset(const qs_reader *r);
int      qs_reader_seek(qs_reader *r, uint64_t offset, uint64_t index);
void     qs_reader_close(qs_reader *r);              /* closes fd unless it is 0 */

/*-*** Writer ***/

typedef struct qs_writer qs_writer;

/* Start a stream on fd (header written at once). chunk = max data bytes per
 * chunk frame (0 = QS_DEFAULT_CHUNK). NULL on error (*errp malloc'd). */
qs_writer *qs_writer_open_fd(int fd, const qs_header *h, size_t chunk, char **errp);
/* Begin a tensor; its nbytes (sum of parts) must then be written exactly. */
int      qs_writer_begin(qs_writer *w, const qs_tensor *t);
int      qs_writer_write(qs_writer *w, const void *buf, size_t n);
int      qs_writer_end(qs_writer *w);                /* -1 if the byte count is short */
/* Convenience: begin + write + end. */
int      qs_writer_put(qs_writer *w, const qs_tensor *t, const void *data);
/* Copy the reader's current tensor (remaining bytes, which must be all of
 * them) to the writer chunk by chunk, under tensor header t (NULL = same). */
int      qs_copy_tensor(qs_reader *r, qs_writer *w, const qs_tensor *t);
/* Write the end record. Returns 0 or -1 (also if any earlier write failed).
 * Frees w in both cases; does not close fd. */
int      qs_writer_close(qs_writer *w, char **errp);
const char *qs_writer_error(const qs_writer *w);
int      qs_writer_errno(const qs_writer *w);        /* errno of the failed write (EPIPE...) or 0 */

/*-*** Helpers ***/

/* Does the file start with the qstream magic? 1 yes, 0 no, -1 unreadable. */
int      qs_path_is_stream(const char *path);

#endif
