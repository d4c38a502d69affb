/* archive — checkpoints inside tar / tar.gz / tar.zst / zip archives, read
 * through libarchive without unpacking to disk.
 *
 * Two passes: the first lists the entries, keeps the small metadata files of
 * the model directory (config.json, tokenizer files) and reads each
 * safetensors entry's header; the second (on demand, sequential) streams the
 * tensor bytes. Reading backwards reopens the archive, so readers should take
 * tensors in list order (the source is marked sequential).
 */
#include "safetensors.h"
#include "source.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CARRIED (64u << 20)

typedef struct {
    char    *name;          /* entry path */
    int      ordinal;       /* position in the archive */
    uint64_t data_start;    /* 8 + header length */
} ar_weights;

typedef struct {
    struct archive *a;
    int      cur;           /* ordinal of the entry positioned at, -1 none */
    uint64_t pos;           /* bytes consumed of that entry */
    int      nweights;
    ar_weights *w;
    int     *weights_of;    /* per tensor: index into w */
    uint64_t *begin;        /* per tensor: offset in its entry's data buffer */
    uint8_t *scratch;
} ar_impl;

static struct archive *ar_open_raw(const char *path, char **errp)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    archive_read_support_format_zip(a);
    archive_read_support_format_7zip(a);
    if (archive_read_open_filename(a, path, 1 << 20) != ARCHIVE_OK) {
        *errp = qsrc_errf("%s: %s", path, archive_error_string(a) ? archive_error_string(a) : "cannot open archive");
        archive_read_free(a);
        return NULL;
    }
    return a;
}

static int ar_read_exact(struct archive *a, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n) {
        la_ssize_t k = archive_read_data(a, p, n);
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static size_t dir_len(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? (size_t)(s - p) : 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

typedef struct { char *path; uint8_t *data; size_t len; } small_file;

static int ar_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    ar_impl *im = s->impl;
    ar_weights *w = &im->w[im->weights_of[idx]];
    uint64_t target = w->data_start + im->begin[idx] + off;
    if (im->cur > w->ordinal || (im->cur == w->ordinal && im->pos > target) || !im->a) {
        if (im->a) archive_read_free(im->a);
        im->a = ar_open_raw(s->path, errp);
        if (!im->a) return -1;
        im->cur = -1;
    }
    while (im->cur < w->ordinal) {
        struct archive_entry *e;
        int rc = archive_read_next_header(im->a, &e);
        if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
            *errp = qsrc_errf("%s: archive changed or truncated while reading '%s'", s->path, w->name);
            return -1;
        }
        im->cur++;
        im->pos = 0;
    }
    while (im->pos < target) {
        size_t k = target - im->pos > (1 << 20) ? (1 << 20) : (size_t)(target - im->pos);
        if (ar_read_exact(im->a, im->scratch, k) < 0) {
            *errp = qsrc_errf("%s: '%s': truncated archive entry", s->path, w->name);
            return -1;
        }
        im->pos += k;
    }
    if (ar_read_exact(im->a, buf, n) < 0) {
        *errp = qsrc_errf("%s: '%s': truncated archive entry (%s)", s->path, w->name,
                          archive_error_string(im->a) ? archive_error_string(im->a) : "short read");
        return -1;
    }
    im->pos += n;
    return 0;
}

static void ar_close(qsrc *s)
{
    ar_impl *im = s->impl;
    if (!im) return;
    if (im->a) archive_read_free(im->a);
    for (int i = 0; i < im->nweights; i++) free(im->w[i].name);
    free(im->w);
    free(im->weights_of);
    free(im->begin);
    free(im->scratch);
    free(im);
}

static const qsrc_ops ar_ops = { ar_read, NULL, ar_close };

/* Which safetensors entries make the model: the shards named by an index, or
 * model.safetensors, or the only .safetensors; all in one directory. */
static int pick_weights(char **names, int n, small_file *files, int nfiles, char **chosen_dir, int *pick,
                        const char *path, char **errp)
{
    for (int i = 0; i < nfiles; i++)
        if (ends_with(files[i].path, "model.safetensors.index.json")) {
            *chosen_dir = strndup(files[i].path, dir_len(files[i].path));
            json_t *root = json_loadb((const char *)files[i].data, files[i].len, JSON_REJECT_DUPLICATES, NULL);
            json_t *wm = json_object_get(root, "weight_map");
            int cnt = 0;
            for (int j = 0; j < n; j++) {
                pick[j] = 0;
                if (dir_len(names[j]) != strlen(*chosen_dir) || strncmp(names[j], *chosen_dir, strlen(*chosen_dir))) continue;
                const char *k;
                json_t *v;
                json_object_foreach(wm, k, v) if (json_is_string(v) && !strcmp(json_string_value(v), base_name(names[j]))) { pick[j] = 1; break; }
                cnt += pick[j];
            }
            json_decref(root);
            if (!cnt) { *errp = qsrc_errf("%s: index names no shard present in the archive", path); return -1; }
            return 0;
        }
    int best = -1, count = 0;
    for (int j = 0; j < n; j++) {
        if (!strcmp(base_name(names[j]), "model.safetensors")) { best = j; count = 1; break; }
        if (ends_with(names[j], ".safetensors")) { best = j; count++; }
    }
    if (best < 0 || count != 1) {
        *errp = qsrc_errf("%s: archive holds %s safetensors model (PyTorch/GGUF inside archives: unpack first)", path,
                          best < 0 ? "no" : "more than one");
        return -1;
    }
    for (int j = 0; j < n; j++) pick[j] = j == best;
    *chosen_dir = strndup(names[best], dir_len(names[best]));
    return 0;
}

qsrc *archive_open(const char *path, char **errp)
{
    struct archive *a = ar_open_raw(path, errp);
    if (!a) return NULL;
    qsrc *s = qsrc_new(path);
    ar_impl *im = calloc(1, sizeof *im);
    s->impl = im;
    s->ops = &ar_ops;
    s->sequential = 1;
    im->cur = -1;
    im->scratch = malloc(1 << 20);
    small_file *files = NULL;
    int nfiles = 0, nst = 0, ordinal = 0;
    char **st_names = NULL;
    int *st_ord = NULL;
    char **st_hdr = NULL;
    uint64_t *st_hlen = NULL, *st_size = NULL;
    char *err = NULL;
    struct archive_entry *e;
    int rc;
    /* pass 1: list entries */
    while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
        const char *name = archive_entry_pathname(e);
        int64_t size = archive_entry_size(e);
        int regular = archive_entry_filetype(e) == AE_IFREG;
        if (name && regular && ends_with(name, ".safetensors")) {
            uint8_t lenb[8];
            uint64_t hl = 0;
            if (size < 8 || ar_read_exact(a, lenb, 8) < 0) { err = qsrc_errf("%s: '%s': truncated safetensors entry", path, name); break; }
            for (int i = 7; i >= 0; i--) hl = hl << 8 | lenb[i];
            if (hl > ST_MAX_HEADER || 8 + hl > (uint64_t)size) { err = qsrc_errf("%s: '%s': bad header length", path, name); break; }
            char *h = malloc(hl ? hl : 1);
            if (ar_read_exact(a, h, hl) < 0) { free(h); err = qsrc_errf("%s: '%s': truncated header", path, name); break; }
            st_names = realloc(st_names, (size_t)(nst + 1) * sizeof *st_names);
            st_ord = realloc(st_ord, (size_t)(nst + 1) * sizeof *st_ord);
            st_hdr = realloc(st_hdr, (size_t)(nst + 1) * sizeof *st_hdr);
            st_hlen = realloc(st_hlen, (size_t)(nst + 1) * sizeof *st_hlen);
            st_size = realloc(st_size, (size_t)(nst + 1) * sizeof *st_size);
            st_names[nst] = strdup(name);
            st_ord[nst] = ordinal;
            st_hdr[nst] = h;
            st_hlen[nst] = hl;
            st_size[nst] = (uint64_t)size;
            nst++;
        } else if (name && regular && size >= 0 && size <= (int64_t)MAX_CARRIED && base_name(name)[0] != '.' &&
                   !ends_with(name, ".bin") && !ends_with(name, ".gguf") && !ends_with(name, ".pt")) {
            files = realloc(files, (size_t)(nfiles + 1) * sizeof *files);
            files[nfiles].path = strdup(name);
            files[nfiles].len = (size_t)size;
            files[nfiles].data = malloc(size ? (size_t)size : 1);
            if (ar_read_exact(a, files[nfiles].data, (size_t)size) < 0) {
                err = qsrc_errf("%s: '%s': truncated entry", path, name);
                nfiles++;
                break;
            }
            nfiles++;
        }
        ordinal++;
    }
    if (!err && rc != ARCHIVE_EOF) err = qsrc_errf("%s: %s", path, archive_error_string(a) ? archive_error_string(a) : "corrupt archive");
    archive_read_free(a);
    char *dir = NULL;
    int *pick = calloc(nst ? (size_t)nst : 1, sizeof *pick);
    if (!err && pick_weights(st_names, nst, files, nfiles, &dir, pick, path, &err) == 0) {
        for (int j = 0; j < nst && !err; j++) {
            if (!pick[j]) continue;
            qs_tensor *ts;
            uint64_t *bg;
            int n = st_parse_header(st_names[j], st_hdr[j], st_hlen[j], st_size[j] - 8 - st_hlen[j], &ts, &bg, NULL, &err);
            if (n < 0) break;
            im->w = realloc(im->w, (size_t)(im->nweights + 1) * sizeof *im->w);
            im->w[im->nweights] = (ar_weights){ strdup(st_names[j]), st_ord[j], 8 + st_hlen[j] };
            im->weights_of = realloc(im->weights_of, (size_t)(s->ntensors + n + 1) * sizeof *im->weights_of);
            im->begin = realloc(im->begin, (size_t)(s->ntensors + n + 1) * sizeof *im->begin);
            for (int i = 0; i < n; i++) {
                im->weights_of[s->ntensors] = im->nweights;
                im->begin[s->ntensors] = bg[i];
                qsrc_add_tensor(s, &ts[i]);
                qs_tensor_clear(&ts[i]);
            }
            im->nweights++;
            free(ts);
            free(bg);
        }
        /* carried files: the model directory's own, by their names relative to it */
        size_t dl = strlen(dir);
        for (int i = 0; i < nfiles && !err; i++) {
            const char *p = files[i].path;
            if (dl ? (strncmp(p, dir, dl) || p[dl] != '/') : strchr(p, '/') != NULL) continue;
            const char *rel = dl ? p + dl + 1 : p;
            if (ends_with(rel, ".index.json") || strchr(rel, '/')) continue;
            qs_header_add_file(&s->header, rel, files[i].data, files[i].len);
        }
    }
    free(dir);
    free(pick);
    for (int i = 0; i < nfiles; i++) { free(files[i].path); free(files[i].data); }
    free(files);
    for (int i = 0; i < nst; i++) { free(st_names[i]); free(st_hdr[i]); }
    free(st_names); free(st_ord); free(st_hdr); free(st_hlen); free(st_size);
    if (err) { qsrc_close(s); *errp = err; return NULL; }
    json_object_set_new(s->header.meta, "format", json_string("safetensors"));
    return s;
}
