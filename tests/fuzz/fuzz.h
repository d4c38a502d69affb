/* fuzz.h — helpers shared by the libFuzzer targets tests/fuzz/fuzz_*.c.
 *
 * Owns: turning fuzz input bytes into something a path-based reader can
 * open (an in-memory file, memfd_create, reached as /proc/self/fd/N; or a
 * real file in a per-process scratch directory when the reader needs a
 * file name or siblings), and draining an opened qsrc (every tensor read
 * in bounded chunks, in list order, so sequential sources work too).
 *
 * Everything is static: the Makefile compiles each target as one file (plus
 * libqpipe sources), so there is no helper object to link. A helper that
 * cannot set up its scratch space aborts: that is a broken fuzz harness, not
 * a finding in the code under test.
 */
#ifndef QPIPE_FUZZ_H
#define QPIPE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "source.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Results are summed here so reads are not optimised away. */
extern volatile unsigned fz_sink;
volatile unsigned fz_sink;

#define FZ_READ_CAP  (64u << 20)   /* bytes drained per tensor at most */
#define FZ_CHUNK     (256u << 10)  /* read size while draining */

/* The bits of a float, to fold into fz_sink without a UB conversion. */
static inline unsigned fz_fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline void fz_write_all(int fd, const void *data, size_t size)
{
    const uint8_t *p = data;
    while (size) {
        ssize_t k = write(fd, p, size);
        if (k <= 0) { perror("fuzz: write"); abort(); }
        p += k;
        size -= (size_t)k;
    }
}

/* An anonymous in-memory file holding data; returns its fd, path gets
 * "/proc/self/fd/N". The caller closes fd. */
static inline int fz_memfile(const uint8_t *data, size_t size, char *path, size_t pathlen)
{
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (fd < 0) { perror("fuzz: memfd_create"); abort(); }
    fz_write_all(fd, data, size);
    if (lseek(fd, 0, SEEK_SET) < 0) { perror("fuzz: lseek"); abort(); }
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

static char fz_dir[256];
static char fz_names[16][64];
static int  fz_nnames;

static inline void fz_cleanup(void)
{
    char p[1400];
    for (int i = 0; i < fz_nnames; i++) {
        snprintf(p, sizeof p, "%s/%s", fz_dir, fz_names[i]);
        unlink(p);
    }
    rmdir(fz_dir);
}

/* A scratch directory private to this process (created once, under
 * $TMPDIR or /tmp); the files put there and the directory are removed at
 * exit. */
static inline const char *fz_scratch_dir(void)
{
    if (!fz_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fz_dir, sizeof fz_dir, "%s/qpipe-fuzz-%ld", t && *t ? t : "/tmp", (long)getpid());
        if (mkdir(fz_dir, 0700) < 0) { perror(fz_dir); abort(); }
        atexit(fz_cleanup);
    }
    return fz_dir;
}

static inline void fz_remember(const char *name)
{
    for (int i = 0; i < fz_nnames; i++)
        if (strcmp(fz_names[i], name) == 0) return;
    if (fz_nnames < 16 && strlen(name) < sizeof fz_names[0]) strcpy(fz_names[fz_nnames++], name);
}

/* Write data to <scratch>/<name> (replacing it); the full path goes to path. */
static inline void fz_put_file(const char *name, const void *data, size_t size, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/%s", fz_scratch_dir(), name);
    fz_remember(name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) { perror(path); abort(); }
    fz_write_all(fd, data, size);
    close(fd);
}

static inline void fz_rm_file(const char *name)
{
    char p[1400];
    snprintf(p, sizeof p, "%s/%s", fz_scratch_dir(), name);
    unlink(p);
}

/* Read every tensor of s (at most FZ_READ_CAP bytes each, in FZ_CHUNK
 * pieces, touching each byte so ASan sees the buffer), and look at the
 * mapping when there is one. Errors are fine (the input is hostile); a crash,
 * leak or sanitizer report is the finding. Returns a checksum so the reads are
 * not optimised out. */
static inline unsigned fz_drain_source(qsrc *s)
{
    static uint8_t buf[FZ_CHUNK];
    unsigned sum = 0;
    for (int i = 0; i < s->ntensors; i++) {
        uint64_t nb = qs_tensor_nbytes(&s->tensors[i]);
        if (nb > FZ_READ_CAP) nb = FZ_READ_CAP;
        for (uint64_t off = 0; off < nb;) {
            size_t n = nb - off < FZ_CHUNK ? (size_t)(nb - off) : FZ_CHUNK;
            char *err = NULL;
            if (qsrc_read(s, i, off, buf, n, &err) < 0) {
                if (!err) { fprintf(stderr, "fuzz: qsrc_read failed without a message\n"); abort(); }
                free(err);
                break;
            }
            for (size_t j = 0; j < n; j += 61) sum += buf[j];
            off += n;
        }
        const uint8_t *m = qsrc_map(s, i);
        if (m && nb) sum += m[0] + m[nb - 1];
    }
    /* a source also has a header: touch the carried files */
    for (int i = 0; i < s->header.nfiles; i++)
        if (s->header.files[i].len) sum += s->header.files[i].data[s->header.files[i].len - 1];
    return sum;
}

/* A reader that returns NULL must say why. With FUZZ_DEBUG set, the
 * outcome is printed (to see which path a seed takes). */
static inline void fz_check_error(const void *result, char *err, const char *what)
{
    if (getenv("FUZZ_DEBUG")) fprintf(stderr, "%s: %s\n", what, result ? "ok" : err ? err : "(no message)");
    if (!result && !err) { fprintf(stderr, "fuzz: %s failed without a message\n", what); abort(); }
    if (result && err) { fprintf(stderr, "fuzz: %s succeeded but set a message: %s\n", what, err); abort(); }
    free(err);
}

#endif
