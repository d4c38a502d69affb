/* fuzz_qstream — libFuzzer target for the qstream reader (common/qstream.c).
 *
 * The input is a stream. It is read twice: as given, and after "fixing up"
 * every frame checksum and the END record's whole-stream hash, so that
 * mutations get past XXH3 verification and reach the frame-info parsers
 * (header, manifest, files, tensor parts, chunks, end counts). Each tensor is
 * consumed in a way chosen by its index (small reads, peeks, read_all, or
 * skipped so qs_reader_next drains it), and the header is walked.
 */
#include "fuzz.h"

#include "qstream.h"
#include "qs_fixup.h"

static unsigned walk_header(const qs_header *h)
{
    unsigned sum = (unsigned)h->version + (unsigned)json_array_size(h->manifest);
    for (int i = 0; i < h->nfiles; i++) {
        sum += (unsigned)strlen(h->files[i].name);
        if (h->files[i].len) sum += h->files[i].data[h->files[i].len - 1];
        if (qs_header_file(h, h->files[i].name) == NULL) abort();
    }
    char *s = json_dumps(h->meta, JSON_COMPACT);
    free(s);
    qs_header copy;
    if (qs_header_copy(&copy, h) == 0) qs_header_clear(&copy);
    return sum;
}

static unsigned consume(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fz_memfile(data, size, path, sizeof path);
    char *err = NULL;
    qs_reader *r = qs_reader_open_fd(fd, "fuzz", &err);
    fz_check_error(r, err, "qs_reader_open_fd");
    if (!r) { close(fd); return 0; }
    unsigned sum = walk_header(qs_reader_header(r));
    const qs_tensor *t;
    int rc, i = 0;
    uint8_t buf[4096];
    while ((rc = qs_reader_next(r, &t)) == 1) {
        sum += (unsigned)t->nparts + (unsigned)strlen(t->name);
        qs_tensor copy;
        if (qs_tensor_copy(&copy, t) == 0) qs_tensor_clear(&copy);
        (void)qs_tensor_rows(t);
        (void)qs_tensor_cols(t);
        switch (i++ % 4) {
        case 0: {                       /* small exact reads */
            uint64_t left = qs_reader_remaining(r);
            while (left) {
                size_t n = left < 1000 ? (size_t)left : 1000;
                if (qs_reader_read(r, buf, n) < 0) goto done;
                sum += buf[0];
                left -= n;
            }
            if (qs_reader_read(r, buf, 1) == 0) abort();   /* past the end must fail */
            break;
        }
        case 1: {                       /* zero-copy peeks */
            const void *p;
            int64_t k;
            while ((k = qs_reader_peek(r, &p, 3000)) > 0) sum += ((const uint8_t *)p)[k - 1];
            if (k < 0) goto done;
            break;
        }
        case 2: {                       /* the whole tensor, if modest */
            if (qs_reader_remaining(r) > FZ_READ_CAP) break;
            size_t len;
            void *all = qs_reader_read_all(r, &len);
            if (!all) goto done;
            if (len) sum += ((uint8_t *)all)[len - 1];
            free(all);
            break;
        }
        default:                        /* skip: next() drains and verifies */
            break;
        }
    }
    if (rc < 0 && !*qs_reader_error(r)) abort();    /* errors must have a message */
done:
    sum += (unsigned)qs_reader_offset(r);
    qs_reader_close(r);                 /* closes fd */
    return sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_sink += consume(data, size);
    uint8_t *fixed = malloc(size ? size : 1);
    memcpy(fixed, data, size);
    if (qs_fix_checksums(fixed, size)) fz_sink += consume(fixed, size);
    free(fixed);
    return 0;
}
