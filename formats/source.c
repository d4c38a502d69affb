/* source — open any supported checkpoint and dispatch to its reader (see
 * source.h). Owns the HF-directory logic: which weight file a directory
 * means (transformers' preference order) and which files are carried. */
#include "source.h"
#include "hfquant.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


char *qsrc_errf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

qsrc *qsrc_new(const char *path)
{
    qsrc *s = calloc(1, sizeof *s);
    s->path = strdup(path);
    qs_header_init(&s->header);
    return s;
}

int qsrc_add_tensor(qsrc *s, const qs_tensor *t)
{
    if ((s->ntensors & (s->ntensors - 1)) == 0) {   /* grow at powers of two */
        size_t cap = s->ntensors ? (size_t)s->ntensors * 2 : 16;
        qs_tensor *nt = realloc(s->tensors, cap * sizeof *nt);
        if (!nt) return -1;
        s->tensors = nt;
    }
    if (qs_tensor_copy(&s->tensors[s->ntensors], t) < 0) return -1;
    s->ntensors++;
    return 0;
}

int qsrc_read(qsrc *s, int idx, uint64_t off, void *buf, size_t n, char **errp)
{
    if (idx < 0 || idx >= s->ntensors) { *errp = qsrc_errf("%s: no tensor %d", s->path, idx); return -1; }
    return s->ops->read(s, idx, off, buf, n, errp);
}

const void *qsrc_map(qsrc *s, int idx)
{
    return s->ops && s->ops->map ? s->ops->map(s, idx) : NULL;
}

int qsrc_find(const qsrc *s, const char *name)
{
    for (int i = 0; i < s->ntensors; i++)
        if (strcmp(s->tensors[i].name, name) == 0) return i;
    return -1;
}

void qsrc_close(qsrc *s)
{
    if (!s) return;
    if (s->ops && s->ops->close) s->ops->close(s);
    for (int i = 0; i < s->ntensors; i++) qs_tensor_clear(&s->tensors[i]);
    free(s->tensors);
    qs_header_clear(&s->header);
    free(s->path);
    free(s);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Files of a model directory that are weights, not carried metadata. */
static int is_weight_file(const char *name)
{
    return ends_with(name, ".safetensors") || ends_with(name, ".bin") || ends_with(name, ".pt") ||
           ends_with(name, ".pth") || ends_with(name, ".gguf") || ends_with(name, ".index.json") ||
           ends_with(name, ".ckpt") || ends_with(name, ".h5") || ends_with(name, ".msgpack") ||
           ends_with(name, ".onnx") || ends_with(name, ".qs");
}

#define MAX_CARRIED (64u << 20)

static int carry_dir_files(qsrc *s, const char *dir, char **errp)
{
    DIR *d = opendir(dir);
    if (!d) { *errp = qsrc_errf("%s: cannot open directory: %s", dir, strerror(errno)); return -1; }
    struct dirent *e;
    char **names = NULL;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || is_weight_file(e->d_name)) continue;
        names = realloc(names, (size_t)(n + 1) * sizeof *names);
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    /* sorted, so streams are reproducible whatever readdir's order */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j]; names[j] = names[j - 1]; names[j - 1] = t;
        }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        struct stat st;
        if (rc == 0 && stat(p, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= (off_t)MAX_CARRIED) {
            FILE *f = fopen(p, "rb");
            if (!f) { *errp = qsrc_errf("%s: cannot open: %s", p, strerror(errno)); rc = -1; }
            else {
                size_t len = (size_t)st.st_size;
                char *buf = malloc(len ? len : 1);
                if (fread(buf, 1, len, f) != len) { *errp = qsrc_errf("%s: read error", p); rc = -1; }
                else qs_header_add_file(&s->header, names[i], buf, len);
                free(buf);
                fclose(f);
            }
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

static int exists(const char *dir, const char *name)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, R_OK) == 0;
}

/* A single weights file of the given suffix in dir, or NULL. */
static char *only_file(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    if (!d) return NULL;
    struct dirent *e;
    char *found = NULL;
    int n = 0;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && ends_with(e->d_name, suffix)) {
            n++;
            free(found);
            found = strdup(e->d_name);
        }
    closedir(d);
    if (n != 1) { free(found); return NULL; }
    return found;
}

/* A GPTQ / AWQ / compressed-tensors checkpoint (said by its config.json)
 * is presented in the qstream's quantized form; others are returned as is. */
static qsrc *quantized_view(qsrc *s, char **errp)
{
    qsrc *q = hfq_wrap_source(s, errp);
    if (!q) qsrc_close(s);
    return q;
}

static qsrc *open_dir(const char *dir, char **errp)
{
    static const char *prefer[] = { "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                    "pytorch_model.bin.index.json" };
    char *pick = NULL;
    for (size_t i = 0; i < sizeof prefer / sizeof *prefer && !pick; i++)
        if (exists(dir, prefer[i])) pick = strdup(prefer[i]);
    if (!pick) pick = only_file(dir, ".safetensors");
    if (!pick) pick = only_file(dir, ".gguf");
    if (!pick) {
        *errp = qsrc_errf("%s: no model weights found (model.safetensors, pytorch_model.bin, their index, or a .gguf)", dir);
        return NULL;
    }
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, pick);
    free(pick);
    qsrc *s = qsrc_open(p, errp);
    if (!s) return NULL;
    if (carry_dir_files(s, dir, errp) < 0) { qsrc_close(s); return NULL; }
    free(s->path);
    s->path = strdup(dir);
    return quantized_view(s, errp);
}

qsrc *qsrc_open(const char *path, char **errp)
{
    struct stat st;
    if (stat(path, &st) < 0) { *errp = qsrc_errf("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    if (S_ISDIR(st.st_mode)) return open_dir(path, errp);
    unsigned char m[512] = { 0 };
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { *errp = qsrc_errf("%s: cannot open: %s", path, strerror(errno)); return NULL; }
    ssize_t k = read(fd, m, sizeof m);
    close(fd);
    if (k < 0) { *errp = qsrc_errf("%s: read error: %s", path, strerror(errno)); return NULL; }
    if (k >= 8 && memcmp(m, "\xa7qstream", 8) == 0) {
        *errp = qsrc_errf("%s: is a qstream, not a checkpoint (feed it on stdin instead)", path);
        return NULL;
    }
    if (ends_with(path, ".index.json")) {
        if (strstr(path, ".safetensors.index.json")) return safetensors_open_index(path, errp);
        return torch_open_index(path, errp);
    }
    if (k >= 4 && memcmp(m, "GGUF", 4) == 0) {
        qsrc *g = gguf_open(path, errp);
        return g ? gguf_hf_view(g, errp) : NULL;
    }
    int is_zip = k >= 4 && memcmp(m, "PK\3\4", 4) == 0;
    if (is_zip && !ends_with(path, ".zip")) {
        return torch_open(path, errp);
    }
    int is_archive = is_zip || (k >= 2 && m[0] == 0x1f && m[1] == 0x8b) ||
                     (k >= 4 && memcmp(m, "\x28\xb5\x2f\xfd", 4) == 0) || (k >= 3 && memcmp(m, "BZh", 3) == 0) ||
                     (k >= 6 && memcmp(m, "\xfd" "7zXZ", 5) == 0) || (k >= 262 && memcmp(m + 257, "ustar", 5) == 0);
    if (is_archive) {
        qsrc *a = archive_open(path, errp);
        return a ? quantized_view(a, errp) : NULL;
    }
    if (k >= 8 && (ends_with(path, ".bin") || ends_with(path, ".pt") || ends_with(path, ".pth")) && m[0] == 0x80) {
        *errp = qsrc_errf("%s: legacy (non-zip) PyTorch checkpoint: re-save it with torch >= 1.6", path);
        return NULL;
    }
    return safetensors_open(path, errp);
}
