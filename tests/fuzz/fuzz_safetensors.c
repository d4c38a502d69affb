/* fuzz_safetensors — libFuzzer target for the safetensors reader
 * (formats/safetensors.c): the input is a whole .safetensors file.
 *
 * Two paths: st_parse_header() straight on the header bytes (length prefix
 * honoured when it fits, the rest of the input as the data buffer), and
 * safetensors_open() on the file in memory (memfd), followed by reading every
 * tensor and touching its mapping.
 */
#include "fuzz.h"

#include "safetensors.h"

static unsigned parse_direct(const uint8_t *data, size_t size)
{
    if (size < 8) return 0;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | data[i];
    if (hlen > size - 8) hlen = size - 8;
    /* an exact-size copy of the header: reads past it are caught */
    char *json = malloc(hlen ? hlen : 1);
    memcpy(json, data + 8, hlen);
    qs_tensor *ts = NULL;
    uint64_t *bg = NULL;
    json_t *md = NULL;
    char *err = NULL;
    int n = st_parse_header("fuzz", json, hlen, size - 8 - hlen, &ts, &bg, &md, &err);
    free(json);
    unsigned sum = 0;
    if (n < 0) {
        if (!err || ts || bg || md) abort();
        free(err);
        return 0;
    }
    if (err) abort();
    uint64_t prev_end = 0;
    for (int i = 0; i < n; i++) {
        /* the contract: sorted, hole-free, inside the data buffer */
        uint64_t nb = qs_tensor_nbytes(&ts[i]);
        if (bg[i] != prev_end || nb > size - 8 - hlen - bg[i]) abort();
        prev_end = bg[i] + nb;
        sum += (unsigned)strlen(ts[i].name);
        qs_tensor_clear(&ts[i]);
    }
    if (prev_end != size - 8 - hlen) abort();
    free(ts);
    free(bg);
    json_decref(md);
    return sum;
}

static unsigned open_file(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    char *err = NULL;
    qsrc *s = safetensors_open(path, &err);
    fz_check_error(s, err, "safetensors_open");
    unsigned sum = 0;
    if (s) {
        sum = fz_drain_source(s);
        qsrc_close(s);
    }
    close(fd);
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_sink += parse_direct(data, size);
    fz_sink += open_file(data, size);
    return 0;
}
