/* torchzip — reader for PyTorch torch.save zip checkpoints (.bin/.pt/.pth)
 * and their sharded pytorch_model.bin.index.json.
 *
 * Owns: torch_open() and torch_open_index() from source.h. Spec:
 * /work/shared/specs/pytorch_checkpoint.md (digest of pytorch
 * caffe2/serialize/inline_container.cc, torch/serialization.py,
 * torch/_utils.py); zip layout from PKWARE APPNOTE.TXT §4.3 (local header,
 * central directory, ZIP64 end record, locator and extra field 0x0001).
 *
 * How it works: the zip central directory is parsed here (random access is
 * the point, and torch's records are always stored, so no decompressor is
 * needed); every size and offset is validated against the file before use.
 * data.pkl goes through the safe unpickler (pickle.c): nothing is executed.
 * Each tensor keeps a view (storage record payload offset, storage_offset,
 * shape, stride); reads return its logical bytes contiguous, row-major,
 * little-endian: contiguous views are pread directly, strided views are
 * gathered from a read-only mapping of the file, big-endian files are swapped.
 * map() hands out pointers into that mapping for contiguous little-endian
 * tensors. Memory stays bounded: nothing but data.pkl is loaded (mapped pages
 * are clean file pages the kernel can drop). A file truncated *after* open
 * can raise SIGBUS on mapped access, as with every mmap reader.
 *
 * qsrc ownership: ops->close frees only s->impl; qsrc_close() (source.c)
 * frees path, header and tensors.
 */
#include "source.h"
#include "pickle.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define TZ_MAX_CD       (256u << 20)    /* central directory bytes */
#define TZ_MAX_ENTRIES  (1u << 20)
#define TZ_MAX_PICKLE   (256u << 20)    /* data.pkl bytes */
#define TZ_MAX_INDEX    (64u << 20)     /* index.json bytes */
#define TZ_EOCD_SCAN    (22u + 65535u)  /* EOCD + longest comment */

/*-*** Zip central directory ***/

typedef struct {
    char     *name;
    uint64_t  lho;          /* local header offset */
    uint64_t  csize, usize;
    uint32_t  crc;
    uint16_t  method, flags;
    uint64_t  payload;      /* payload offset, once resolved (0 = not yet) */
} tz_entry;

typedef struct {
    int        fd;
    uint64_t   size;        /* file size */
    uint64_t   cd_off;      /* records must end before this */
    tz_entry  *ents;  size_t nents;       /* central directory order */
    tz_entry **sorted;                    /* by name, for lookup */
    char      *folder;                    /* "<folder>/" prefix */
} tz_zip;

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* pread exactly n bytes at off; -1 with errno (0 = unexpected EOF). */
static int tz_pread(int fd, void *buf, size_t n, uint64_t off)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = 0;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static const char *tz_ioerr(void)
{
    return errno ? strerror(errno) : "unexpected end of file";
}

/* CRC-32 (IEEE 802.3, reflected 0xEDB88320), as zip uses. */
static uint32_t tz_crc32(const uint8_t *p, size_t n)
{
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = 1;
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* Locate the end of central directory; fills entries / cd size / cd offset. */
static int tz_find_eocd(tz_zip *z, uint64_t *nent, uint64_t *cdsize, uint64_t *cdoff, char **why)
{
    size_t scan = z->size < TZ_EOCD_SCAN ? (size_t)z->size : TZ_EOCD_SCAN;
    uint64_t base = z->size - scan;
    uint8_t *buf = malloc(scan ? scan : 1);
    if (!buf)
        return *why = "out of memory", -1;
    if (tz_pread(z->fd, buf, scan, base) < 0) {
        free(buf);
        return *why = "cannot read the end of the file", -1;
    }
    long at = -1;
    for (long i = (long)scan - 22; i >= 0; i--)
        if (rd32(buf + i) == 0x06054b50u && (size_t)i + 22 + rd16(buf + i + 20) <= scan) {
            at = i;
            break;
        }
    if (at < 0) {
        free(buf);
        return *why = "no zip end of central directory (truncated or not a zip file)", -1;
    }
    const uint8_t *e = buf + at;
    uint64_t eocd_pos = base + (uint64_t)at;
    *nent = rd16(e + 10);
    *cdsize = rd32(e + 12);
    *cdoff = rd32(e + 16);
    int need64 = *nent == 0xFFFF || *cdsize == 0xFFFFFFFFu || *cdoff == 0xFFFFFFFFu;
    int has_loc = at >= 20 && rd32(e - 20) == 0x07064b50u;
    if (!has_loc && (rd16(e + 4) != 0 || rd16(e + 6) != 0)) {
        free(buf);
        return *why = "multi-disk zip archives are not supported", -1;
    }
    uint64_t limit = eocd_pos;
    if (has_loc || need64) {
        if (!has_loc) {
            free(buf);
            return *why = "ZIP64 end of central directory locator missing", -1;
        }
        uint64_t z64 = rd64(e - 20 + 8);
        uint8_t r[56];
        if (z64 > eocd_pos - 20 || eocd_pos - 20 - z64 < 56 || tz_pread(z->fd, r, 56, z64) < 0 ||
            rd32(r) != 0x06064b50u) {
            free(buf);
            return *why = "bad ZIP64 end of central directory record", -1;
        }
        if (rd32(r + 16) != 0 || rd32(r + 20) != 0) {
            free(buf);
            return *why = "multi-disk zip archives are not supported", -1;
        }
        *nent = rd64(r + 32);
        *cdsize = rd64(r + 40);
        *cdoff = rd64(r + 48);
        limit = z64;
    }
    free(buf);
    if (*cdoff > limit || *cdsize > limit - *cdoff)
        return *why = "central directory lies outside the file (truncated zip?)", -1;
    if (*cdsize > TZ_MAX_CD || *nent > TZ_MAX_ENTRIES)
        return *why = "central directory too large", -1;
    return 0;
}

/* ZIP64 extended information (extra id 0x0001): replace the saturated fields. */
static int tz_zip64_extra(tz_entry *t, const uint8_t *x, size_t xlen)
{
    size_t i = 0;
    while (i + 4 <= xlen) {
        uint16_t id = rd16(x + i), len = rd16(x + i + 2);
        if (i + 4 + len > xlen)
            return -1;
        if (id == 0x0001) {
            const uint8_t *f = x + i + 4;
            size_t k = 0;
            uint64_t *want[3] = { &t->usize, &t->csize, &t->lho };
            for (int w = 0; w < 3; w++)
                if (*want[w] == 0xFFFFFFFFu) {
                    if (k + 8 > len)
                        return -1;
                    *want[w] = rd64(f + k);
                    k += 8;
                }
            return 0;
        }
        i += 4 + (size_t)len;
    }
    return 0;
}

static int tz_entry_cmp(const void *a, const void *b)
{
    return strcmp((*(tz_entry *const *)a)->name, (*(tz_entry *const *)b)->name);
}

/* Parse the central directory into z->ents. */
static int tz_parse_cd(tz_zip *z, const uint8_t *cd, size_t cdsize, uint64_t nent, char **why)
{
    z->ents = calloc(nent ? nent : 1, sizeof *z->ents);
    if (!z->ents)
        return *why = "out of memory", -1;
    size_t p = 0;
    for (uint64_t i = 0; i < nent; i++) {
        if (p + 46 > cdsize || rd32(cd + p) != 0x02014b50u)
            return *why = "corrupt central directory entry", -1;
        const uint8_t *h = cd + p;
        size_t nlen = rd16(h + 28), xlen = rd16(h + 30), clen = rd16(h + 32);
        if (p + 46 + nlen + xlen + clen > cdsize)
            return *why = "corrupt central directory entry", -1;
        tz_entry *t = &z->ents[z->nents];
        t->flags = rd16(h + 8);
        t->method = rd16(h + 10);
        t->crc = rd32(h + 16);
        t->csize = rd32(h + 20);
        t->usize = rd32(h + 24);
        t->lho = rd32(h + 42);
        if (!(t->name = malloc(nlen + 1)))
            return *why = "out of memory", -1;
        memcpy(t->name, h + 46, nlen);
        t->name[nlen] = '\0';
        z->nents++;
        if (strlen(t->name) != nlen)
            return *why = "zip entry name contains a NUL byte", -1;
        if (tz_zip64_extra(t, h + 46 + nlen, xlen) < 0)
            return *why = "corrupt ZIP64 extra field", -1;
        p += 46 + nlen + xlen + clen;
    }
    z->sorted = malloc((z->nents ? z->nents : 1) * sizeof *z->sorted);
    if (!z->sorted)
        return *why = "out of memory", -1;
    for (size_t i = 0; i < z->nents; i++)
        z->sorted[i] = &z->ents[i];
    qsort(z->sorted, z->nents, sizeof *z->sorted, tz_entry_cmp);
    for (size_t i = 1; i < z->nents; i++)
        if (strcmp(z->sorted[i - 1]->name, z->sorted[i]->name) == 0)
            return *why = "duplicate zip entry name", -1;
    return 0;
}

/* Top folder: the first entry's name up to its first '/' (torch does this). */
static int tz_set_folder(tz_zip *z, char **why)
{
    if (z->nents == 0)
        return *why = "empty zip archive", -1;
    const char *slash = strchr(z->ents[0].name, '/');
    if (!slash || slash == z->ents[0].name)
        return *why = "first zip entry is not inside a top-level folder", -1;
    size_t n = (size_t)(slash - z->ents[0].name) + 1;
    if (!(z->folder = malloc(n + 1)))
        return *why = "out of memory", -1;
    memcpy(z->folder, z->ents[0].name, n);
    z->folder[n] = '\0';
    return 0;
}

static void tz_zip_clear(tz_zip *z)
{
    for (size_t i = 0; i < z->nents; i++)
        free(z->ents[i].name);
    free(z->ents);
    free(z->sorted);
    free(z->folder);
    if (z->fd >= 0)
        close(z->fd);
    memset(z, 0, sizeof *z);
    z->fd = -1;
}

/* Open path and read its central directory. */
static int tz_zip_open(tz_zip *z, const char *path, char **why)
{
    memset(z, 0, sizeof *z);
    if ((z->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return *why = strerror(errno), -1;
    struct stat st;
    if (fstat(z->fd, &st) < 0 || !S_ISREG(st.st_mode))
        return *why = "not a regular file", -1;
    z->size = (uint64_t)st.st_size;
    uint8_t magic[8] = { 0 };
    if (z->size < 8 || tz_pread(z->fd, magic, 8, 0) < 0)
        return *why = "too short to be a torch checkpoint", -1;
    if (memcmp(magic, "PYTORCH1", 8) == 0)
        return *why = "pre-release PYTORCH1 format is not supported", -1;
    if (memcmp(magic, "PK\3\4", 4) != 0)
        return *why = magic[0] == 0x80 ? "legacy (pre-1.6, non-zip) torch format is not supported"
                                       : "not a zip file", -1;
    uint64_t nent, cdsize, cdoff;
    if (tz_find_eocd(z, &nent, &cdsize, &cdoff, why) < 0)
        return -1;
    uint8_t *cd = malloc(cdsize ? (size_t)cdsize : 1);
    if (!cd)
        return *why = "out of memory", -1;
    if (tz_pread(z->fd, cd, (size_t)cdsize, cdoff) < 0) {
        free(cd);
        return *why = "cannot read the central directory", -1;
    }
    z->cd_off = cdoff;
    int rc = tz_parse_cd(z, cd, (size_t)cdsize, nent, why);
    free(cd);
    if (rc < 0)
        return -1;
    return tz_set_folder(z, why);
}

static tz_entry *tz_zip_find(const tz_zip *z, const char *record)
{
    size_t fl = strlen(z->folder), rl = strlen(record);
    char *name = malloc(fl + rl + 1);
    if (!name)
        return NULL;
    memcpy(name, z->folder, fl);
    memcpy(name + fl, record, rl + 1);
    tz_entry key = { .name = name }, *kp = &key;
    tz_entry **hit = bsearch(&kp, z->sorted, z->nents, sizeof *z->sorted, tz_entry_cmp);
    free(name);
    return hit ? *hit : NULL;
}

/* Payload offset of a stored record: local header offset + 30 + name + extra
 * (inline_container.cc getRecordOffset), checked to end before the CD. */
static int tz_payload(const tz_zip *z, tz_entry *t, uint64_t *off, char **why)
{
    uint8_t h[30];
    if (t->payload) {
        *off = t->payload;
        return 0;
    }
    if (t->method != 0)
        return *why = "record is compressed (torch writes stored records)", -1;
    if (t->flags & 1)
        return *why = "record is encrypted", -1;
    if (t->csize != t->usize)
        return *why = "stored record with different sizes", -1;
    if (t->lho > z->cd_off || z->cd_off - t->lho < 30 || tz_pread(z->fd, h, 30, t->lho) < 0 ||
        rd32(h) != 0x04034b50u)
        return *why = "bad local file header", -1;
    uint64_t p = t->lho + 30 + rd16(h + 26) + rd16(h + 28);
    if (rd16(h + 26) != strlen(t->name) || p > z->cd_off || t->usize > z->cd_off - p)
        return *why = "record extends past its bounds (truncated zip?)", -1;
    *off = t->payload = p;
    return 0;
}

/*-*** Tensor views ***/

typedef struct {
    uint64_t base;                      /* payload offset of the storage record */
    int64_t  offset;                    /* storage_offset, elements */
    int      ndim;
    int64_t  shape[PK_MAX_DIMS];
    int64_t  stride[PK_MAX_DIMS];       /* elements */
    size_t   es;                        /* element size */
    uint64_t nbytes;                    /* logical bytes */
    int      contiguous;
} tz_view;

typedef struct {
    tz_zip    zip;
    int       big_endian;
    tz_view  *views;  int nviews, capviews;
    const uint8_t *map;                 /* whole file, mapped on first strided read */
} tz_impl;

static uint64_t tz_numel(const tz_view *v, int *overflow)
{
    uint64_t n = 1;
    *overflow = 0;
    for (int d = 0; d < v->ndim; d++)
        if (__builtin_mul_overflow(n, (uint64_t)v->shape[d], &n))
            *overflow = 1;
    return n;
}

static int tz_is_contiguous(const tz_view *v)
{
    int64_t expect = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] == 0)
            return 1;
        if (v->shape[d] != 1 && v->stride[d] != expect)
            return 0;
        expect *= v->shape[d];
    }
    return 1;
}

/* Check a tensor's storage reference against the archive (record exists and
 * is stored, its size matches the persistent id, shape/stride/offset stay
 * inside it, sizes don't overflow); fill v. NULL, or a malloc'd message. */
static char *tz_view_make(tz_impl *im, const pk_obj *t, tz_view *v)
{
    const pk_obj *st = t->u.tensor.storage;
    char rec[80];
    snprintf(rec, sizeof rec, "data/%s", st->u.storage.key);
    tz_entry *e = tz_zip_find(&im->zip, rec);
    if (!e)
        return qsrc_errf("storage record '%s' not found", rec);
    char *why = NULL;
    if (tz_payload(&im->zip, e, &v->base, &why) < 0)
        return qsrc_errf("storage record '%s': %s", rec, why);
    /* storage length in bytes: numel elements of the storage type (bytes if untyped) */
    uint64_t sbytes = (uint64_t)st->u.storage.numel;
    if (st->u.storage.dtype != DT_INVALID &&
        __builtin_mul_overflow(sbytes, (uint64_t)dtype_size(st->u.storage.dtype), &sbytes))
        return qsrc_errf("storage '%s': element count overflows", rec);
    if (sbytes != e->usize)
        return qsrc_errf("storage record '%s' holds %llu bytes, its persistent id says %llu",
                         rec, (unsigned long long)e->usize, (unsigned long long)sbytes);
    v->es = dtype_size(t->u.tensor.dtype);
    v->ndim = t->u.tensor.ndim;
    v->offset = t->u.tensor.offset;
    memcpy(v->shape, t->u.tensor.shape, (size_t)v->ndim * sizeof *v->shape);
    memcpy(v->stride, t->u.tensor.stride, (size_t)v->ndim * sizeof *v->stride);
    int ovf;
    uint64_t numel = tz_numel(v, &ovf);
    if (ovf || __builtin_mul_overflow(numel, (uint64_t)v->es, &v->nbytes) || v->nbytes > INT64_MAX)
        return qsrc_errf("shape overflows");
    if (numel > 0) {
        /* last element: offset + sum (size_d - 1) * stride_d, must lie in the storage */
        uint64_t last = (uint64_t)v->offset, step;
        for (int d = 0; d < v->ndim; d++)
            if (__builtin_mul_overflow((uint64_t)(v->shape[d] - 1), (uint64_t)v->stride[d], &step) ||
                __builtin_add_overflow(last, step, &last))
                return qsrc_errf("shape/stride overflow");
        if (last >= sbytes / v->es)
            return qsrc_errf("shape/stride reach element %llu of storage '%s', which has %llu",
                             (unsigned long long)last, rec, (unsigned long long)(sbytes / v->es));
    }
    v->contiguous = tz_is_contiguous(v);
    return NULL;
}

static int tz_views_push(tz_impl *im, const tz_view *v)
{
    if (im->nviews == im->capviews) {
        int cap = im->capviews ? im->capviews * 2 : 64;
        tz_view *nv = realloc(im->views, (size_t)cap * sizeof *nv);
        if (!nv)
            return -1;
        im->views = nv;
        im->capviews = cap;
    }
    im->views[im->nviews++] = *v;
    return 0;
}

/*-*** Reading ***/

static void tz_swap(uint8_t *p, size_t cnt, size_t es)
{
    for (size_t i = 0; i < cnt; i++, p += es)
        for (size_t a = 0, b = es - 1; a < b; a++, b--) {
            uint8_t x = p[a];
            p[a] = p[b];
            p[b] = x;
        }
}

/* Gather cnt logical elements starting at logical element e0 from the map. */
static void tz_gather(const uint8_t *src, const tz_view *v, uint64_t e0, uint64_t cnt, uint8_t *dst)
{
    int64_t idx[PK_MAX_DIMS];
    int last = v->ndim - 1;
    uint64_t rem = e0;
    int64_t pos = v->offset;                    /* storage element of idx */
    for (int d = last; d >= 0; d--) {
        idx[d] = (int64_t)(rem % (uint64_t)v->shape[d]);
        rem /= (uint64_t)v->shape[d];
        pos += idx[d] * v->stride[d];
    }
    size_t es = v->es;
    while (cnt > 0) {
        /* one run along the innermost dimension */
        uint64_t r = (uint64_t)(v->shape[last] - idx[last]);
        if (r > cnt)
            r = cnt;
        if (v->stride[last] == 1)
            memcpy(dst, src + (uint64_t)pos * es, r * es);
        else
            for (uint64_t j = 0; j < r; j++)
                memcpy(dst + j * es, src + (uint64_t)(pos + (int64_t)j * v->stride[last]) * es, es);
        dst += r * es;
        cnt -= r;
        idx[last] += (int64_t)r;
        pos += (int64_t)r * v->stride[last];
        /* carry into outer dimensions */
        for (int d = last; d > 0 && idx[d] == v->shape[d]; d--) {
            pos -= idx[d] * v->stride[d];
            idx[d] = 0;
            idx[d - 1]++;
            pos += v->stride[d - 1];
        }
    }
}

/* Map the whole file read-only, once. 0, or -1 with errno. */
static int tz_ensure_map(tz_impl *im)
{
    if (im->map)
        return 0;
    void *m = mmap(NULL, (size_t)im->zip.size, PROT_READ, MAP_PRIVATE, im->zip.fd, 0);
    if (m == MAP_FAILED)
        return -1;
    im->map = m;
    return 0;
}

/* cnt whole logical elements from e0 into dst (little-endian). */
static int tz_read_elems(qsrc *s, const tz_view *v, uint64_t e0, uint64_t cnt, uint8_t *dst, char **errp)
{
    tz_impl *im = s->impl;
    if (cnt == 0)
        return 0;
    if (v->contiguous) {
        uint64_t at = v->base + ((uint64_t)v->offset + e0) * v->es;
        if (tz_pread(im->zip.fd, dst, (size_t)(cnt * v->es), at) < 0) {
            *errp = qsrc_errf("%s: read: %s", s->path, tz_ioerr());
            return -1;
        }
    } else {
        if (tz_ensure_map(im) < 0) {
            *errp = qsrc_errf("%s: mmap: %s", s->path, strerror(errno));
            return -1;
        }
        tz_gather(im->map + v->base, v, e0, cnt, dst);
    }
    if (im->big_endian && v->es > 1)
        tz_swap(dst, (size_t)cnt, v->es);
    return 0;
}

static int tz_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    tz_impl *im = s->impl;
    if (idx < 0 || idx >= im->nviews) {
        *errp = qsrc_errf("%s: no tensor #%d", s->path, idx);
        return -1;
    }
    const tz_view *v = &im->views[idx];
    if (off > v->nbytes || n > v->nbytes - off) {
        *errp = qsrc_errf("%s: tensor '%s': read of %zu bytes at %llu past its %llu bytes", s->path,
                          s->tensors[idx].name, n, (unsigned long long)off, (unsigned long long)v->nbytes);
        return -1;
    }
    uint8_t *out = buf, tmp[16];
    size_t es = v->es;
    uint64_t e = off / es;
    size_t head = (size_t)(off % es);
    if (head && n > 0) {                        /* partial first element */
        size_t k = es - head < n ? es - head : n;
        if (tz_read_elems(s, v, e, 1, tmp, errp) < 0)
            return -1;
        memcpy(out, tmp + head, k);
        out += k;
        n -= k;
        e++;
    }
    uint64_t whole = n / es;
    if (tz_read_elems(s, v, e, whole, out, errp) < 0)
        return -1;
    out += whole * es;
    n -= (size_t)(whole * es);
    if (n > 0) {                                /* partial last element */
        if (tz_read_elems(s, v, e + whole, 1, tmp, errp) < 0)
            return -1;
        memcpy(out, tmp, n);
    }
    return 0;
}

/* Zero-copy pointer to a tensor's bytes when the file already holds them in
 * logical order (contiguous view, little-endian file); NULL otherwise. */
static const void *tz_map(qsrc *s, int idx)
{
    tz_impl *im = s->impl;
    if (idx < 0 || idx >= im->nviews)
        return NULL;
    const tz_view *v = &im->views[idx];
    if (!v->contiguous || (im->big_endian && v->es > 1) || v->nbytes == 0 || tz_ensure_map(im) < 0)
        return NULL;
    return im->map + v->base + (uint64_t)v->offset * v->es;
}

static void tz_close(qsrc *s)
{
    tz_impl *im = s->impl;
    if (!im)
        return;
    if (im->map)
        munmap((void *)im->map, (size_t)im->zip.size);
    tz_zip_clear(&im->zip);
    free(im->views);
    free(im);
    s->impl = NULL;
}

static const qsrc_ops tz_ops = { .read = tz_read, .map = tz_map, .close = tz_close };

/*-*** Opening ***/

/* Read a small stored record whole (NUL-terminated). */
static uint8_t *tz_read_record(tz_impl *im, tz_entry *e, uint64_t max, char **why)
{
    uint64_t off;
    if (tz_payload(&im->zip, e, &off, why) < 0)
        return NULL;
    if (e->usize > max) {
        *why = "record too large";
        return NULL;
    }
    uint8_t *buf = malloc((size_t)e->usize + 1);
    if (!buf) {
        *why = "out of memory";
        return NULL;
    }
    if (tz_pread(im->zip.fd, buf, (size_t)e->usize, off) < 0) {
        free(buf);
        *why = "cannot read record";
        return NULL;
    }
    buf[e->usize] = '\0';
    if (tz_crc32(buf, (size_t)e->usize) != e->crc) {
        free(buf);
        *why = "CRC mismatch";
        return NULL;
    }
    return buf;
}

/* byteorder record: "little" (or absent) / "big". */
static char *tz_byteorder(tz_impl *im)
{
    tz_entry *e = tz_zip_find(&im->zip, "byteorder");
    if (!e)
        return NULL;
    char *why = NULL;
    char *b = (char *)tz_read_record(im, e, 16, &why);
    if (!b)
        return qsrc_errf("byteorder: %s", why);
    size_t n = strlen(b);
    while (n > 0 && (b[n - 1] == '\n' || b[n - 1] == '\r' || b[n - 1] == ' '))
        b[--n] = '\0';
    char *err = NULL;
    if (strcmp(b, "big") == 0)
        im->big_endian = 1;
    else if (strcmp(b, "little") != 0)
        err = qsrc_errf("byteorder record says '%.16s'", b);
    free(b);
    return err;
}

static int tz_has_tensor(const pk_obj *dict)
{
    for (size_t i = 0; i < dict->u.dict.n; i++)
        if (dict->u.dict.vals[i]->kind == PK_TENSOR)
            return 1;
    return 0;
}

/* The dict holding the tensors: the root, or one level down under a common key. */
static const pk_obj *tz_state_dict(const pk_obj *root)
{
    static const char *const keys[] = { "state_dict", "model", "module", "model_state_dict", "weights" };
    if (root->kind != PK_DICT)
        return NULL;
    if (tz_has_tensor(root))
        return root;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const pk_obj *sd = pickle_dict_get(root, keys[k]);
        if (sd && sd->kind == PK_DICT && tz_has_tensor(sd))
            return sd;
    }
    return NULL;
}

/* Add every tensor of the state dict to s; non-tensor values are listed in
 * meta "torch_skipped". Returns NULL or a message. */
static char *tz_add_tensors(qsrc *s, tz_impl *im, const pk_obj *sd)
{
    json_t *skipped = json_array();
    for (size_t i = 0; i < sd->u.dict.n; i++) {
        const pk_obj *k = sd->u.dict.keys[i], *val = sd->u.dict.vals[i];
        if (k->kind != PK_STR || k->u.str.len == 0 || strlen(k->u.str.s) != k->u.str.len) {
            json_decref(skipped);
            return qsrc_errf("state dict key #%zu is not a valid name", i);
        }
        if (val->kind != PK_TENSOR) {
            json_array_append_new(skipped, json_string(k->u.str.s));
            continue;
        }
        if (val->u.tensor.ndim > QS_MAX_DIMS) {
            json_decref(skipped);
            return qsrc_errf("tensor '%s': %d dims", k->u.str.s, val->u.tensor.ndim);
        }
        tz_view v;
        memset(&v, 0, sizeof v);
        char *why = tz_view_make(im, val, &v);
        if (why) {
            char *m = qsrc_errf("tensor '%s': %s", k->u.str.s, why);
            free(why);
            json_decref(skipped);
            return m;
        }
        qs_tensor t;
        memset(&t, 0, sizeof t);
        if (qs_tensor_init(&t, k->u.str.s, val->u.tensor.dtype, v.ndim, v.shape) < 0 ||
            qsrc_add_tensor(s, &t) < 0 || tz_views_push(im, &v) < 0) {
            qs_tensor_clear(&t);
            json_decref(skipped);
            return qsrc_errf("tensor '%s': out of memory", k->u.str.s);
        }
        qs_tensor_clear(&t);
    }
    if (json_array_size(skipped) > 0)
        json_object_set(s->header.meta, "torch_skipped", skipped);
    json_decref(skipped);
    return NULL;
}

/* Parse data.pkl and register its tensors. */
static char *tz_load_pickle(qsrc *s, tz_impl *im)
{
    if (tz_zip_find(&im->zip, "constants.pkl"))
        return qsrc_errf("a TorchScript archive (constants.pkl), not a torch.save checkpoint");
    tz_entry *e = tz_zip_find(&im->zip, "data.pkl");
    if (!e)
        return qsrc_errf("no %sdata.pkl record", im->zip.folder);
    char *why = NULL;
    uint8_t *pk = tz_read_record(im, e, TZ_MAX_PICKLE, &why);
    if (!pk)
        return qsrc_errf("data.pkl: %s", why);
    pk_doc *doc = pickle_load(pk, (size_t)e->usize, &why);
    free(pk);
    if (!doc) {
        char *m = qsrc_errf("data.pkl: %s", why);
        free(why);
        return m;
    }
    const pk_obj *sd = tz_state_dict(pickle_root(doc));
    char *err = sd ? tz_add_tensors(s, im, sd) : qsrc_errf("data.pkl holds no state dict of tensors");
    pickle_free(doc);
    return err;
}

qsrc *torch_open(const char *path, char **errp)
{
    qsrc *s = qsrc_new(path);
    tz_impl *im = calloc(1, sizeof *im);
    if (!s || !im) {
        free(im);
        if (s)
            qsrc_close(s);
        *errp = qsrc_errf("%s: out of memory", path);
        return NULL;
    }
    im->zip.fd = -1;
    s->ops = &tz_ops;
    s->impl = im;
    char *why = NULL, *err = NULL;
    if (tz_zip_open(&im->zip, path, &why) < 0)
        err = qsrc_errf("%s", why);
    else if (!(err = tz_byteorder(im)))
        err = tz_load_pickle(s, im);
    if (err) {
        *errp = qsrc_errf("%s: %s", path, err);
        free(err);
        qsrc_close(s);
        return NULL;
    }
    json_object_set_new(s->header.meta, "format", json_string("torch"));
    return s;
}

/*-*** Sharded checkpoints: pytorch_model.bin.index.json ***/

typedef struct {
    int    nshards;
    qsrc **shards;
    int   *shard_of;                    /* per merged tensor */
    int   *sub;                         /* index inside its shard */
} tz_index;

static int tzi_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    tz_index *ix = s->impl;
    if (idx < 0 || idx >= s->ntensors) {
        *errp = qsrc_errf("%s: no tensor #%d", s->path, idx);
        return -1;
    }
    qsrc *sh = ix->shards[ix->shard_of[idx]];
    return sh->ops->read(sh, ix->sub[idx], off, buf, n, errp);
}

static const void *tzi_map(qsrc *s, int idx)
{
    tz_index *ix = s->impl;
    if (idx < 0 || idx >= s->ntensors)
        return NULL;
    qsrc *sh = ix->shards[ix->shard_of[idx]];
    return sh->ops->map ? sh->ops->map(sh, ix->sub[idx]) : NULL;
}

static void tzi_close(qsrc *s)
{
    tz_index *ix = s->impl;
    if (!ix)
        return;
    for (int i = 0; i < ix->nshards; i++)
        if (ix->shards[i])
            qsrc_close(ix->shards[i]);
    free(ix->shards);
    free(ix->shard_of);
    free(ix->sub);
    free(ix);
    s->impl = NULL;
}

static const qsrc_ops tzi_ops = { .read = tzi_read, .map = tzi_map, .close = tzi_close };

static int tzi_name_ok(const char *f)
{
    return f[0] && !strchr(f, '/') && strcmp(f, ".") != 0 && strcmp(f, "..") != 0;
}

static int tzi_strcmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Distinct shard file names of weight_map, sorted. */
static char *tzi_shard_names(json_t *wm, const char ***names, int *n)
{
    size_t cnt = json_object_size(wm), k = 0;
    const char **v = malloc((cnt ? cnt : 1) * sizeof *v);
    if (!v)
        return qsrc_errf("out of memory");
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        const char *f = json_string_value(val);
        if (!f || !tzi_name_ok(f)) {
            free(v);
            return qsrc_errf("weight_map['%s'] is not a plain file name", key);
        }
        v[k++] = f;
    }
    qsort(v, k, sizeof *v, tzi_strcmp);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || strcmp(v[u - 1], v[i]) != 0)
            v[u++] = v[i];
    *names = v;
    *n = (int)u;
    return NULL;
}

/* Open every shard and merge its tensors into s, checking them against wm. */
static char *tzi_merge(qsrc *s, tz_index *ix, json_t *wm, const char *dir, const char **names)
{
    size_t matched = 0, total = json_object_size(wm);
    for (int i = 0; i < ix->nshards; i++) {
        char *sp = qsrc_errf("%s%s", dir, names[i]), *err = NULL;
        if (!sp)
            return qsrc_errf("out of memory");
        ix->shards[i] = torch_open(sp, &err);
        free(sp);
        if (!ix->shards[i]) {
            char *m = qsrc_errf("shard '%s': %s", names[i], err);
            free(err);
            return m;
        }
        qsrc *sh = ix->shards[i];
        int *so = realloc(ix->shard_of, (size_t)(s->ntensors + sh->ntensors + 1) * sizeof *so);
        if (so) ix->shard_of = so;
        int *sb = realloc(ix->sub, (size_t)(s->ntensors + sh->ntensors + 1) * sizeof *sb);
        if (sb) ix->sub = sb;
        if (!so || !sb)
            return qsrc_errf("out of memory");
        for (int j = 0; j < sh->ntensors; j++) {
            const char *tn = sh->tensors[j].name;
            const char *want = json_string_value(json_object_get(wm, tn));
            if (!want)
                return qsrc_errf("tensor '%s' of shard '%s' is not in weight_map", tn, names[i]);
            if (strcmp(want, names[i]) != 0)
                return qsrc_errf("tensor '%s' is in shard '%s' but weight_map says '%s'", tn, names[i], want);
            ix->shard_of[s->ntensors] = i;
            ix->sub[s->ntensors] = j;
            if (qsrc_add_tensor(s, &sh->tensors[j]) < 0)
                return qsrc_errf("out of memory");
            matched++;
        }
    }
    if (matched != total) {
        const char *key;
        json_t *val;
        json_object_foreach(wm, key, val)
            if (qsrc_find(s, key) < 0)
                return qsrc_errf("weight_map lists '%s' in '%s' but that shard has no such tensor",
                                 key, json_string_value(val));
        return qsrc_errf("weight_map and shards disagree");
    }
    return NULL;
}

static char *tzi_load(qsrc *s, tz_index *ix, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return qsrc_errf("%s", strerror(errno));
    if (st.st_size > (off_t)TZ_MAX_INDEX)
        return qsrc_errf("index file too large");
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return qsrc_errf("line %d: %s", je.line, je.text);
    json_t *wm = json_object_get(root, "weight_map");
    char *err = NULL;
    const char **names = NULL;
    if (!json_is_object(wm) || json_object_size(wm) == 0)
        err = qsrc_errf("no weight_map object");
    else if (!(err = tzi_shard_names(wm, &names, &ix->nshards))) {
        ix->shards = calloc((size_t)ix->nshards, sizeof *ix->shards);
        const char *slash = strrchr(path, '/');
        char *dir = strndup(path, slash ? (size_t)(slash - path) + 1 : 0);
        if (!ix->shards || !dir)
            err = qsrc_errf("out of memory");
        else
            err = tzi_merge(s, ix, wm, dir, names);
        free(dir);
        free(names);
    }
    json_decref(root);
    return err;
}

qsrc *torch_open_index(const char *path, char **errp)
{
    qsrc *s = qsrc_new(path);
    tz_index *ix = calloc(1, sizeof *ix);
    if (!s || !ix) {
        free(ix);
        if (s)
            qsrc_close(s);
        *errp = qsrc_errf("%s: out of memory", path);
        return NULL;
    }
    s->ops = &tzi_ops;
    s->impl = ix;
    char *err = tzi_load(s, ix, path);
    if (err) {
        *errp = qsrc_errf("%s: %s", path, err);
        free(err);
        qsrc_close(s);
        return NULL;
    }
    json_object_set_new(s->header.meta, "format", json_string("torch"));
    json_object_set_new(s->header.meta, "shards", json_integer(ix->nshards));
    return s;
}
