/* fuzz_torchzip — libFuzzer target for PyTorch zip checkpoints
 * (formats/torchzip.c: zip central directory, ZIP64, records, byte order,
 * then data.pkl through pickle.c and the tensor views): the input is a whole
 * .pt/.bin file, opened from memory (memfd) with torch_open(); every tensor
 * is read (strided views are gathered, big-endian files swapped).
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    char *err = NULL;
    qsrc *s = torch_open(path, &err);
    fz_check_error(s, err, "torch_open");
    if (s) {
        fz_sink += fz_drain_source(s);
        qsrc_close(s);
    }
    close(fd);
    return 0;
}
