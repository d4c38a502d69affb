/* pickle — a safe, minimal unpickler for the data.pkl of torch.save files.
 *
 * Owns: turning a pickle byte stream (protocols 0-5 opcodes that a state dict
 * needs) into an inert object tree. Nothing is ever executed: GLOBAL /
 * STACK_GLOBAL resolve only names on a fixed allow-list (collections.OrderedDict,
 * the torch._utils rebuild functions, torch.<X>Storage types, torch dtypes,
 * torch.Size) to *markers*, and REDUCE / BUILD / BINPERSID are interpreted
 * only for those markers, exactly as torch.load(weights_only=True) restricts
 * them. Any other global, opcode or REDUCE target is an error.
 * Spec: /work/shared/specs/pytorch_checkpoint.md §3-§4 (from pytorch
 * torch/_weights_only_unpickler.py and torch/_utils.py); opcode semantics from
 * CPython Lib/pickletools.py.
 *
 * How to think of it: pickle_load() runs the stack machine over the bytes and
 * returns a pk_doc owning every object it made (a flat list, so freeing never
 * recurses, and memo-shared or even cyclic graphs are harmless). Tensors come
 * out as PK_TENSOR nodes carrying a PK_STORAGE reference (record key, dtype,
 * element count) plus offset / shape / stride in elements; the caller (the
 * torch zip reader) checks them against the archive's records.
 *
 * Invariants and bounds (all checked before allocating): at most
 * PK_MAX_OBJECTS objects, a stack of PK_MAX_STACK entries, PK_MAX_MARKS nested
 * marks, container nesting PK_MAX_DEPTH, memo indices < PK_MAX_MEMO, strings
 * PK_MAX_STR bytes, integers fit in int64, tensors PK_MAX_DIMS dims with
 * non-negative sizes/strides/offsets.
 */
#ifndef QPIPE_PICKLE_H
#define QPIPE_PICKLE_H

#include <stddef.h>
#include <stdint.h>
#include "dtype.h"

#define PK_MAX_OBJECTS (1 << 20)     /* ~20 per tensor: 50k tensors; < 100 MB */
#define PK_MAX_STACK   (1 << 20)
#define PK_MAX_MARKS   64
#define PK_MAX_DEPTH   64
#define PK_MAX_MEMO    (1 << 22)
#define PK_MAX_STR     (1 << 20)
#define PK_MAX_DIMS    8

typedef enum {
    PK_NONE, PK_BOOL, PK_INT, PK_FLOAT, PK_STR, PK_BYTES,
    PK_TUPLE, PK_LIST, PK_DICT,
    PK_GLOBAL,      /* an allow-listed name (marker, never code) */
    PK_STORAGE,     /* persistent id ('storage', type, key, location, numel) */
    PK_TENSOR       /* result of a _rebuild_tensor* REDUCE */
} pk_kind;

/* Allow-listed globals. */
typedef enum {
    PKG_ORDERED_DICT,       /* collections.OrderedDict */
    PKG_REBUILD_TENSOR,     /* torch._utils._rebuild_tensor (pre-0.4, 4 args) */
    PKG_REBUILD_TENSOR_V2,  /* torch._utils._rebuild_tensor_v2 */
    PKG_REBUILD_TENSOR_V3,  /* torch._utils._rebuild_tensor_v3 */
    PKG_REBUILD_PARAMETER,  /* torch._utils._rebuild_parameter */
    PKG_REBUILD_PARAMETER_STATE, /* torch._utils._rebuild_parameter_with_state */
    PKG_STORAGE_TYPE,       /* torch.<X>Storage (dtype set; DT_INVALID = UntypedStorage) */
    PKG_DTYPE,              /* torch.<dtype> (for _rebuild_tensor_v3) */
    PKG_SIZE                /* torch.Size */
} pk_global_id;

typedef struct pk_obj pk_obj;
struct pk_obj {
    pk_kind kind;
    int     depth;                      /* container nesting at creation (scalars: 0) */
    union {
        int64_t i;                      /* PK_BOOL, PK_INT */
        double  f;                      /* PK_FLOAT */
        struct { char *s; size_t len; uint32_t hash; } str; /* PK_STR, PK_BYTES (NUL-terminated copy, FNV-1a) */
        struct { pk_obj **items; size_t n, cap; } seq;     /* PK_TUPLE, PK_LIST */
        struct {
            pk_obj **keys, **vals; size_t n, cap;   /* insertion order */
            uint32_t *slots; size_t nslots;         /* open-addressing index: entry + 1, 0 = empty */
            int ordered;                            /* made by collections.OrderedDict() */
        } dict;                                     /* PK_DICT */
        struct { pk_global_id id; qdtype dtype; const char *name; } global;  /* PK_GLOBAL */
        struct {
            char    *key;               /* record data/<key>: [A-Za-z0-9_.-], no ".." */
            qdtype   dtype;             /* DT_INVALID for torch.UntypedStorage */
            int64_t  numel;             /* elements of dtype (bytes if untyped) */
        } storage;                      /* PK_STORAGE */
        struct {
            pk_obj  *storage;           /* a PK_STORAGE */
            qdtype   dtype;             /* element type of the tensor */
            int      ndim;
            int64_t  offset;            /* storage_offset, in elements of dtype */
            int64_t *shape;             /* [ndim] */
            int64_t *stride;            /* [ndim], in elements (same allocation as shape) */
        } tensor;                       /* PK_TENSOR */
    } u;
};

typedef struct pk_doc pk_doc;

/* Unpickle buf[0..len). Returns the document (free with pickle_free), or NULL
 * with *errp = malloc'd one-line message such as
 * "forbidden global 'os.system' at byte 2" or "unknown opcode 0x69 at byte 5".
 * Never executes anything, never reads outside buf. */
pk_doc       *pickle_load(const uint8_t *buf, size_t len, char **errp);
/* The object STOP returned (never NULL for a loaded document). Can't fail. */
const pk_obj *pickle_root(const pk_doc *d);
/* Number of objects created (for tests / limits). Can't fail. */
size_t        pickle_nobjects(const pk_doc *d);
void          pickle_free(pk_doc *d);          /* NULL is fine */

/* Look up a string key in a PK_DICT; NULL if absent or o is not a dict. */
const pk_obj *pickle_dict_get(const pk_obj *o, const char *key);

#endif
