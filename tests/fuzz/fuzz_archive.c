/* fuzz_archive — libFuzzer target for checkpoints inside archives
 * (formats/archive.c through libarchive): the input is a .tar / .tar.gz /
 * .zip / ... file. It is opened with archive_open() from memory (memfd) and
 * every tensor is read in list order (the source is sequential), then once
 * more out of order (last tensor first), which makes the reader reopen.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    char *err = NULL;
    qsrc *s = archive_open(path, &err);
    fz_check_error(s, err, "archive_open");
    if (s) {
        fz_sink += fz_drain_source(s);
        if (s->ntensors > 1) {
            uint8_t b[64];
            uint64_t nb = qs_tensor_nbytes(&s->tensors[s->ntensors - 1]);
            char *e2 = NULL;
            if (qsrc_read(s, s->ntensors - 1, 0, b, nb < sizeof b ? (size_t)nb : sizeof b, &e2) < 0) free(e2);
            if (qsrc_read(s, 0, 0, b, 1, &e2) < 0) free(e2);
        }
        qsrc_close(s);
    }
    close(fd);
    return 0;
}
