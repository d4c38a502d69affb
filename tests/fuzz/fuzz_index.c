/* fuzz_index — libFuzzer target for sharded-checkpoint indexes: the input is
 * the text of an index JSON, opened both as model.safetensors.index.json
 * (safetensors_open_index, formats/safetensors.c) and as
 * pytorch_model.bin.index.json (torch_open_index, formats/torchzip.c), in a
 * scratch directory that also holds two tiny safetensors shards
 * (model-0000{1,2}-of-00002.safetensors, made here) and two tiny torch shards
 * (shard-0000{1,2}-of-00002.bin, copied from tests/data/torch at start-up,
 * so run from the repository root). Every tensor of an opened index is read.
 */
#include "fuzz.h"

#include "safetensors.h"

/* A one-tensor safetensors file: {name: F32 [n]} with values 0..n-1. */
static void put_shard(const char *file, const char *tensor, int n)
{
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[0,%d]}}",
                      tensor, n, 4 * n);
    while (hl % 8) hdr[hl++] = ' ';
    uint8_t buf[512];
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, (size_t)hl);
    for (int i = 0; i < n; i++) {
        float v = (float)i;
        memcpy(buf + 8 + hl + 4 * i, &v, 4);
    }
    char path[512];
    fz_put_file(file, buf, 8 + (size_t)hl + 4 * (size_t)n, path, sizeof path);
}

static void copy_in(const char *src, const char *name)
{
    FILE *f = fopen(src, "rb");
    if (!f) { fprintf(stderr, "fuzz_index: cannot open %s (run from the repository root)\n", src); abort(); }
    static uint8_t buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    char path[512];
    fz_put_file(name, buf, n, path, sizeof path);
}

static void setup_once(void)
{
    static int done;
    if (done) return;
    done = 1;
    put_shard("model-00001-of-00002.safetensors", "a", 2);
    put_shard("model-00002-of-00002.safetensors", "b", 3);
    copy_in("tests/data/torch/shard-00001-of-00002.bin", "shard-00001-of-00002.bin");
    copy_in("tests/data/torch/shard-00002-of-00002.bin", "shard-00002-of-00002.bin");
}

static unsigned try_open(qsrc *(*opener)(const char *, char **), const char *name,
                         const uint8_t *data, size_t size)
{
    char path[512];
    fz_put_file(name, data, size, path, sizeof path);
    char *err = NULL;
    qsrc *s = opener(path, &err);
    fz_check_error(s, err, name);
    unsigned sum = 0;
    if (s) {
        sum = fz_drain_source(s);
        qsrc_close(s);
    }
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup_once();
    fz_sink += try_open(safetensors_open_index, "model.safetensors.index.json", data, size);
    fz_sink += try_open(torch_open_index, "pytorch_model.bin.index.json", data, size);
    return 0;
}
