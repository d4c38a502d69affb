/* fuzz_gguf — libFuzzer target for the GGUF reader (formats/gguf.c): the
 * input is a whole .gguf file. Three paths: gguf_file_parse() on an
 * exact-size copy (reads past the end are caught), gguf_file_parse_ex() as a
 * header excerpt of a larger file, and qsrc_open() on the file in memory
 * (memfd; dispatches on the magic to gguf_open, including the llama → HF
 * view) followed by reading every tensor.
 */
#include "fuzz.h"

#include "gguf.h"

static void parse(const uint8_t *data, size_t size)
{
    char *err = NULL;
    gguf_file *f = gguf_file_parse(data, size, "fuzz", &err);
    fz_check_error(f, err, "gguf_file_parse");
    if (f) {
        for (int64_t i = 0; i < f->ntensors; i++) {
            const gguf_tensor_info *t = &f->tensors[i];
            /* the promise: every tensor lies inside the buffer */
            if (f->data_offset + t->offset + t->nbytes > size || t->offset + t->nbytes < t->offset) abort();
            if (t->nbytes) fz_sink += f->base[f->data_offset + t->offset + t->nbytes - 1];
            if (gguf_file_find(f, t->name) < 0) abort();
        }
        char *kv = json_dumps(f->kv, JSON_COMPACT);
        free(kv);
        gguf_file_close(f);
    }
    err = NULL;
    f = gguf_file_parse_ex(data, size, (uint64_t)size * 128 + 4096, "fuzz", &err);
    fz_check_error(f, err, "gguf_file_parse_ex");
    gguf_file_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse(data, size);
    if (size < 4 || memcmp(data, "GGUF", 4) != 0) return 0;   /* qsrc_open would pick another reader */
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    char *err = NULL;
    qsrc *s = qsrc_open(path, &err);
    fz_check_error(s, err, "qsrc_open(gguf)");
    if (s) {
        fz_sink += fz_drain_source(s);
        qsrc_close(s);
    }
    close(fd);
    return 0;
}
