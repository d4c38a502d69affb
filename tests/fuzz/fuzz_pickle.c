/* fuzz_pickle — libFuzzer target for the safe unpickler (formats/pickle.c):
 * the input is a pickle byte stream (data.pkl of a torch.save zip). A loaded
 * document's object graph is walked (bounded: memo sharing makes it a DAG
 * or even cyclic) and looked up the way the torch reader does. Nothing may
 * ever be executed: the allow-list is the reader's, the fuzzer checks only
 * memory safety, leaks and that every refusal carries a message.
 */
#include "fuzz.h"

#include "pickle.h"

static unsigned walk(const pk_obj *o, int depth, unsigned *budget)
{
    if (!o || depth > 80 || *budget == 0) return 0;
    (*budget)--;
    unsigned sum = (unsigned)o->kind;
    switch (o->kind) {
    case PK_STR: case PK_BYTES:
        if (o->u.str.s[o->u.str.len] != 0) abort();     /* promised NUL-terminated copy */
        sum += o->u.str.len ? (unsigned char)o->u.str.s[0] : 0;
        break;
    case PK_TUPLE: case PK_LIST:
        for (size_t i = 0; i < o->u.seq.n; i++) sum += walk(o->u.seq.items[i], depth + 1, budget);
        break;
    case PK_DICT:
        for (size_t i = 0; i < o->u.dict.n; i++) {
            sum += walk(o->u.dict.keys[i], depth + 1, budget);
            sum += walk(o->u.dict.vals[i], depth + 1, budget);
        }
        (void)pickle_dict_get(o, "state_dict");
        (void)pickle_dict_get(o, "");
        break;
    case PK_STORAGE:
        sum += (unsigned)strlen(o->u.storage.key) + (unsigned)o->u.storage.numel;
        break;
    case PK_TENSOR:
        if (o->u.tensor.ndim < 0 || o->u.tensor.ndim > PK_MAX_DIMS) abort();
        sum += walk(o->u.tensor.storage, depth + 1, budget);
        break;
    case PK_GLOBAL:
        if (o->u.global.name) sum += (unsigned)strlen(o->u.global.name);
        break;
    default:
        break;
    }
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *err = NULL;
    pk_doc *d = pickle_load(data, size, &err);
    fz_check_error(d, err, "pickle_load");
    if (d) {
        unsigned budget = 100000;
        fz_sink += walk(pickle_root(d), 0, &budget) + (unsigned)pickle_nobjects(d);
        pickle_free(d);
    }
    return 0;
}
