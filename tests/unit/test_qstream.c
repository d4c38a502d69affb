/* test_qstream — the stream format: round trips, chunking, and that every
 * single-byte corruption and every truncation is caught. */
#include "testlib.h"
#include "qstream.h"

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

/* Write a small stream (2 tensors, tiny chunks, a carried file) to a memory buffer. */
static uint8_t *make_stream(size_t *len, size_t chunk)
{
    char path[] = "/tmp/qs-test-XXXXXX";
    int fd = mkstemp(path);
    qs_header h;
    qs_header_init(&h);
    qs_header_add_file(&h, "config.json", "{\"a\":1}", 7);
    qs_header_add_provenance(&h, "test", "0", 0, NULL);
    qs_tensor a, b;
    int64_t sa[2] = { 3, 5 }, sb[1] = { 4 };
    qs_tensor_init(&a, "a.weight", DT_F32, 2, sa);
    qs_tensor_init(&b, "b", DT_I64, 1, sb);
    b.attrs = json_pack("{s:s}", "note", "x");
    qs_header_manifest_add(&h, &a);
    qs_header_manifest_add(&h, &b);
    float av[15];
    int64_t bv[4] = { -1, 2, 3, INT64_MAX };
    for (int i = 0; i < 15; i++) av[i] = (float)i * 0.5f;
    char *err = NULL;
    qs_writer *w = qs_writer_open_fd(fd, &h, chunk, &err);
    CHECK(w != NULL);
    CHECK(qs_writer_begin(w, &a) == 0);
    for (int i = 0; i < 15; i++) CHECK(qs_writer_write(w, &av[i], 4) == 0);   /* write piecewise */
    CHECK(qs_writer_end(w) == 0);
    CHECK(qs_writer_put(w, &b, bv) == 0);
    CHECK(qs_writer_close(w, &err) == 0);
    *len = (size_t)lseek(fd, 0, SEEK_END);
    uint8_t *buf = malloc(*len);
    CHECK(pread(fd, buf, *len, 0) == (ssize_t)*len);
    close(fd);
    unlink(path);
    qs_tensor_clear(&a);
    qs_tensor_clear(&b);
    qs_header_clear(&h);
    return buf;
}

/* Read a stream from memory; returns 0 when it is read cleanly with the
 * right contents, else -1 (message in err). */
static int read_stream(const uint8_t *buf, size_t len, char *err, size_t errlen)
{
    char path[] = "/tmp/qs-test-XXXXXX";
    int fd = mkstemp(path);
    if (write(fd, buf, len) != (ssize_t)len) return -2;
    lseek(fd, 0, SEEK_SET);
    unlink(path);
    char *e = NULL;
    qs_reader *r = qs_reader_open_fd(fd, "mem", &e);
    if (!r) { snprintf(err, errlen, "%s", e); free(e); close(fd); return -1; }
    const qs_tensor *t;
    int n = 0, rc, bad = 0;
    float av[15];
    int64_t bv[4];
    while ((rc = qs_reader_next(r, &t)) == 1) {
        if (n == 0) { if (qs_reader_read(r, av, sizeof av) < 0) { rc = -1; break; } bad |= av[14] != 7.0f; }
        if (n == 1) { if (qs_reader_read(r, bv, sizeof bv) < 0) { rc = -1; break; } bad |= bv[3] != INT64_MAX; }
        n++;
    }
    if (rc < 0) snprintf(err, errlen, "%s", qs_reader_error(r));
    const qs_file *f = qs_reader_header(r) ? qs_header_file(qs_reader_header(r), "config.json") : NULL;
    bad |= !f || f->len != 7;
    qs_reader_close(r);
    return rc < 0 ? -1 : (n != 2 || bad) ? -3 : 0;
}

TEST(a_stream_round_trips_tensors_attrs_files_and_manifest)
{
    size_t len;
    uint8_t *buf = make_stream(&len, 16);
    char err[600] = "";
    CHECK_MSG(read_stream(buf, len, err, sizeof err) == 0, "%s", err);
    free(buf);
}

TEST(every_single_byte_flip_is_detected)
{
    size_t len;
    uint8_t *buf = make_stream(&len, 16);
    int undetected = 0;
    for (size_t i = 0; i < len; i++)
        for (int bit = 0; bit < 8; bit += 7) {
            buf[i] ^= (uint8_t)(1u << bit);
            char err[600] = "";
            int rc = read_stream(buf, len, err, sizeof err);
            if (rc != -1 && undetected++ < 3) fprintf(stderr, "  flip at %zu bit %d: rc %d\n", i, bit, rc);
            buf[i] ^= (uint8_t)(1u << bit);
        }
    CHECK(undetected == 0);
    free(buf);
}

TEST(every_truncation_is_reported_as_truncated)
{
    size_t len;
    uint8_t *buf = make_stream(&len, 16);
    int bad = 0;
    for (size_t n = 0; n < len; n++) {
        char err[600] = "";
        int rc = read_stream(buf, n, err, sizeof err);
        if (rc != -1 || (!strstr(err, "truncated") && !strstr(err, "empty input"))) {
            if (bad++ < 3) fprintf(stderr, "  truncated at %zu: rc %d '%s'\n", n, rc, err);
        }
    }
    CHECK(bad == 0);
    free(buf);
}

TEST(errors_name_the_tensor_and_the_byte_offset)
{
    size_t len;
    uint8_t *buf = make_stream(&len, 16);
    /* find the first chunk's data (the value 0.5f = 00 00 00 3f) and corrupt it */
    size_t at = 0;
    for (size_t i = 0; i + 4 < len; i++) if (!memcmp(buf + i, "\0\0\0\x3f", 4)) { at = i; break; }
    CHECK(at > 0);
    buf[at + 3] ^= 0x40;
    char err[600] = "";
    CHECK(read_stream(buf, len, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "checksum") && strstr(err, "'a.weight'") && strstr(err, "byte "), "%s", err);
    free(buf);
}

TEST(a_newer_version_is_refused_with_a_clear_message)
{
    size_t len;
    uint8_t *buf = make_stream(&len, 16);
    /* the header info holds "version" followed by a positive fixint 1 */
    uint8_t *p = memmem(buf, len, "\xa7version\x01", 9);
    CHECK(p != NULL);
    if (p) p[8] = 2;
    /* re-seal the header frame (starts after the 8-byte magic) so only the version is wrong */
    size_t ilen = (size_t)buf[11] << 24 | (size_t)buf[12] << 16 | (size_t)buf[13] << 8 | buf[14];
    size_t flen = 7 + ilen + 5;
    uint64_t hsh = XXH3_64bits(buf + 8, flen);
    for (int i = 0; i < 8; i++) buf[8 + flen + 1 + i] = (uint8_t)(hsh >> (56 - 8 * i));
    char err[600] = "";
    CHECK(read_stream(buf, len, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "unsupported qstream version 2"), "%s", err);
    free(buf);
}

TEST(writer_refuses_a_short_tensor_and_extra_bytes)
{
    int fd = open("/dev/null", O_WRONLY);
    qs_header h;
    qs_header_init(&h);
    char *err = NULL;
    qs_writer *w = qs_writer_open_fd(fd, &h, 0, &err);
    qs_tensor t;
    int64_t s[1] = { 4 };
    qs_tensor_init(&t, "x", DT_F32, 1, s);
    float v[5] = { 0 };
    CHECK(qs_writer_begin(w, &t) == 0);
    CHECK(qs_writer_write(w, v, 8) == 0);
    CHECK(qs_writer_end(w) == -1);
    CHECK(strstr(qs_writer_error(w), "8 of 16 bytes") != NULL);
    CHECK(qs_writer_close(w, &err) == -1);          /* sticky */
    free(err);
    qs_tensor_clear(&t);
    qs_header_clear(&h);
    close(fd);
}

TEST(writing_to_a_full_disk_fails_at_close_at_the_latest)
{
    int fd = open("/dev/full", O_WRONLY);
    if (fd < 0) { printf("# skipped: no /dev/full\n"); return; }
    qs_header h;
    qs_header_init(&h);
    char *err = NULL;
    qs_writer *w = qs_writer_open_fd(fd, &h, 0, &err);
    CHECK(w == NULL && err && strstr(err, "No space"));
    free(err);
    qs_header_clear(&h);
    close(fd);
}

int main(void)
{
    RUN(a_stream_round_trips_tensors_attrs_files_and_manifest);
    RUN(every_single_byte_flip_is_detected);
    RUN(every_truncation_is_reported_as_truncated);
    RUN(errors_name_the_tensor_and_the_byte_offset);
    RUN(a_newer_version_is_refused_with_a_clear_message);
    RUN(writer_refuses_a_short_tensor_and_extra_bytes);
    RUN(writing_to_a_full_disk_fails_at_close_at_the_latest);
    return tl_summary();
}
