/* cli — process-level helpers shared by every qpipe program (see cli.h). */
#include "cli.h"
#include "qstream.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

const char *prog_name = "qpipe";
int verbosity = 1;
int progress_forced;

/*-*** Diagnostics ***/

__attribute__((format(printf, 2, 0)))
static void vreport(const char *prefix, const char *fmt, va_list ap, int with_errno, int e)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "%s: %s", prog_name, prefix);
    if (n < 0) n = 0;
    if ((size_t)n < sizeof line) {
        int k = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        if (k > 0) n += k;
    }
    if ((size_t)n >= sizeof line - 2) n = (int)sizeof line - 2;
    if (with_errno) {
        int k = snprintf(line + n, sizeof line - (size_t)n, ": %s", strerror(e));
        if (k > 0) n += k;
        if ((size_t)n >= sizeof line - 2) n = (int)sizeof line - 2;
    }
    for (int i = 0; i < n; i++)                 /* one line: no control characters */
        if ((unsigned char)line[i] < 0x20) line[i] = '?';
    line[n++] = '\n';
    ssize_t rc = write(2, line, (size_t)n);
    (void)rc;
}

static void cleanup_outputs(void);

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap, 0, 0);
    va_end(ap);
    cleanup_outputs();
    exit(EXIT_RUNTIME);
}

void die_errno(const char *fmt, ...)
{
    int e = errno;
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap, 1, e);
    va_end(ap);
    cleanup_outputs();
    exit(EXIT_RUNTIME);
}

void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap, 0, 0);
    va_end(ap);
    char hint[256];
    int n = snprintf(hint, sizeof hint, "%s: try '%s --help'\n", prog_name, prog_name);
    ssize_t rc = write(2, hint, (size_t)n);
    (void)rc;
    cleanup_outputs();
    exit(EXIT_USAGE);
}

void warn_msg(const char *fmt, ...)
{
    if (verbosity < 1) return;
    va_list ap;
    va_start(ap, fmt);
    vreport("warning: ", fmt, ap, 0, 0);
    va_end(ap);
}

void info_msg(const char *fmt, ...)
{
    if (verbosity < 2) return;
    va_list ap;
    va_start(ap, fmt);
    vreport("", fmt, ap, 0, 0);
    va_end(ap);
}

void die_free(char *msg)
{
    die("%s", msg ? msg : "unknown error");
}

/*-*** Program start ***/

void proginit(int *argc, char **argv, const char *name, const char *usage)
{
    prog_name = name;
    signal(SIGPIPE, SIG_DFL);
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            for (; i < *argc; i++) argv[out++] = argv[i];
            break;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            close_stdout_or_die();
            exit(EXIT_OK);
        } else if (strcmp(a, "--version") == 0) {
            printf("%s (qpipe) %s\n", name, QPIPE_VERSION);
            close_stdout_or_die();
            exit(EXIT_OK);
        } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            verbosity = 0;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            verbosity = 2;
        } else if (strcmp(a, "--progress") == 0 || strcmp(a, "--fake-tty") == 0) {
            progress_forced = 1;
        } else {
            argv[out++] = argv[i];
        }
    }
    *argc = out;
    argv[out] = NULL;
}

/*-*** Output ***/

void exit_if_epipe(int err)
{
    if (err == EPIPE) {
        cleanup_outputs();
        signal(SIGPIPE, SIG_DFL);
        raise(SIGPIPE);
        exit(141);
    }
}

void write_or_die(int fd, const void *buf, size_t n, const char *what)
{
    const char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            exit_if_epipe(errno);
            die_errno("%s: write error", what);
        }
        p += k;
        n -= (size_t)k;
    }
}

void writer_die(const qs_writer *w)
{
    exit_if_epipe(qs_writer_errno(w));
    die("stdout: %s", qs_writer_error(w));
}

void refuse_tty(int fd, const char *what)
{
    if (isatty(fd))
        usage_error("refusing to write a binary %s to a terminal (redirect it or pipe it to the next tool)", what);
}

void close_stdout_or_die(void)
{
    int bad = fflush(stdout) != 0 || ferror(stdout);
    int e = errno;
    if (fclose(stdout) != 0 || bad) {
        if (!bad) e = errno;
        exit_if_epipe(e);
        errno = e;
        die_errno("stdout: write error");
    }
}

/*-*** Atomic outputs ***/

#define MAX_OUTPUTS 8
static out_file *live_outputs[MAX_OUTPUTS];

static void remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) { unlink(path); return; }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
        remove_tree(sub);
    }
    closedir(d);
    rmdir(path);
}

static void cleanup_outputs(void)
{
    for (int i = 0; i < MAX_OUTPUTS; i++)
        if (live_outputs[i] && live_outputs[i]->tmp) {
            if (live_outputs[i]->is_dir) remove_tree(live_outputs[i]->tmp);
            else unlink(live_outputs[i]->tmp);
        }
}

/* In a signal handler only async-signal-safe calls: unlink the temporary
 * files (newest first: shard files inside a temporary directory go before
 * it), then rmdir the directories. Carried files are written into a
 * directory in the last moments before its rename; a signal exactly then
 * leaves that directory behind (die() paths use remove_tree and do not). */
static void on_signal(int sig)
{
    for (int i = MAX_OUTPUTS - 1; i >= 0; i--)
        if (live_outputs[i] && live_outputs[i]->tmp && !live_outputs[i]->is_dir) unlink(live_outputs[i]->tmp);
    for (int i = MAX_OUTPUTS - 1; i >= 0; i--)
        if (live_outputs[i] && live_outputs[i]->tmp && live_outputs[i]->is_dir) rmdir(live_outputs[i]->tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void register_output(out_file *o)
{
    static int handlers;
    if (!handlers) {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        signal(SIGHUP, on_signal);
        signal(SIGXFSZ, SIG_IGN);   /* past `ulimit -f`, writes fail with EFBIG: reported, temp removed */
        handlers = 1;
    }
    for (int i = 0; i < MAX_OUTPUTS; i++)
        if (!live_outputs[i]) { live_outputs[i] = o; return; }
    die("too many open outputs");
}

static void unregister_output(out_file *o)
{
    for (int i = 0; i < MAX_OUTPUTS; i++)
        if (live_outputs[i] == o) live_outputs[i] = NULL;
}

static char *tmp_name(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    char *t = malloc(n + 32);
    if (!t) die("out of memory");
    snprintf(t, n + 32, "%.*s.tmp.%ld", (int)n, path, (long)getpid());
    return t;
}

void out_create(out_file *o, const char *path)
{
    memset(o, 0, sizeof *o);
    o->path = strdup(path);
    o->tmp = tmp_name(path);
    o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (o->fd < 0) {
        int e = errno;
        free(o->tmp);
        o->tmp = NULL;
        errno = e;
        die_errno("%s: cannot create", path);
    }
    register_output(o);
}

static void fsync_parent(const char *path)
{
    char *d = strdup(path);
    char *slash = strrchr(d, '/');
    const char *dir = ".";
    if (slash) { *slash = 0; dir = *d ? d : "/"; }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) { fsync(fd); close(fd); }
    free(d);
}

void out_commit(out_file *o)
{
    if (fsync(o->fd) < 0 && errno != EINVAL && errno != EROFS) die_errno("%s: fsync", o->path);
    if (close(o->fd) < 0) die_errno("%s: close", o->path);
    o->fd = -1;
    if (rename(o->tmp, o->path) < 0) die_errno("%s: rename", o->path);
    unregister_output(o);
    fsync_parent(o->path);
    free(o->tmp);
    free(o->path);
    o->tmp = o->path = NULL;
}

void out_abort(out_file *o)
{
    if (o->fd >= 0 && !o->is_dir) close(o->fd);
    if (o->tmp) {
        if (o->is_dir) remove_tree(o->tmp);
        else unlink(o->tmp);
    }
    unregister_output(o);
    free(o->tmp);
    free(o->path);
    o->tmp = o->path = NULL;
}

void out_dir_create(out_file *o, const char *dir)
{
    memset(o, 0, sizeof *o);
    o->is_dir = 1;
    o->fd = -1;
    o->path = strdup(dir);
    size_t n = strlen(o->path);
    while (n > 1 && o->path[n - 1] == '/') o->path[--n] = 0;
    o->tmp = tmp_name(o->path);
    if (mkdir(o->tmp, 0755) < 0) {
        int e = errno;
        free(o->tmp);
        o->tmp = NULL;
        errno = e;
        die_errno("%s: cannot create directory", o->path);
    }
    register_output(o);
}

void out_dir_commit(out_file *o)
{
    struct stat st;
    if (stat(o->path, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) die("%s: exists and is not a directory", o->path);
        /* Replace an existing output directory: move it aside, then remove it. */
        char *old = malloc(strlen(o->path) + 32);
        sprintf(old, "%s.old.%ld", o->path, (long)getpid());
        if (rename(o->path, old) < 0) die_errno("%s: cannot replace", o->path);
        if (rename(o->tmp, o->path) < 0) {
            int e = errno;
            if (rename(old, o->path) < 0) { /* best effort to restore */ }
            errno = e;
            die_errno("%s: rename", o->path);
        }
        remove_tree(old);
        free(old);
    } else if (rename(o->tmp, o->path) < 0) {
        die_errno("%s: rename", o->path);
    }
    unregister_output(o);
    fsync_parent(o->path);
    free(o->tmp);
    free(o->path);
    o->tmp = o->path = NULL;
}

void out_dir_write_file(out_file *o, const char *name, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", o->tmp, name);
    /* carried files may live in subdirectories */
    for (char *s = path + strlen(o->tmp) + 1; (s = strchr(s, '/')); s++) {
        *s = 0;
        if (mkdir(path, 0755) < 0 && errno != EEXIST) die_errno("%s: mkdir", path);
        *s = '/';
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die_errno("%s/%s: cannot create", o->path, name);
    write_or_die(fd, data, len, name);
    if (fsync(fd) < 0 && errno != EINVAL) die_errno("%s/%s: fsync", o->path, name);
    if (close(fd) < 0) die_errno("%s/%s: close", o->path, name);
}

/*-*** Option values ***/

long parse_long(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < lo || v > hi)
        usage_error("%s: invalid value '%s' (expected an integer in %ld..%ld)", opt, s ? s : "", lo, hi);
    return v;
}

double parse_double(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || !*s || *end || errno || !(v >= lo && v <= hi))
        usage_error("%s: invalid value '%s' (expected a number in %g..%g)", opt, s ? s : "", lo, hi);
    return v;
}

uint64_t parse_size(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : -1;
    if (!s || end == s || errno || v < 0) usage_error("%s: invalid size '%s'", opt, s ? s : "");
    double mult = 1;
    const char *u = end;
    if (!strcasecmp(u, "") || !strcasecmp(u, "B")) mult = 1;
    else if (!strcasecmp(u, "KB")) mult = 1e3;
    else if (!strcasecmp(u, "MB")) mult = 1e6;
    else if (!strcasecmp(u, "GB")) mult = 1e9;
    else if (!strcasecmp(u, "TB")) mult = 1e12;
    else if (!strcasecmp(u, "KiB") || !strcasecmp(u, "K")) mult = 1024.0;
    else if (!strcasecmp(u, "MiB") || !strcasecmp(u, "M")) mult = 1048576.0;
    else if (!strcasecmp(u, "GiB") || !strcasecmp(u, "G")) mult = 1073741824.0;
    else usage_error("%s: invalid size unit in '%s' (use B, KB, MB, GB, KiB, MiB, GiB)", opt, s);
    double r = v * mult;
    if (r >= 1.8e19) usage_error("%s: size '%s' too large", opt, s);
    return (uint64_t)r;
}

int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

/*-*** Progress ***/

static struct {
    int on;
    uint64_t total_t, total_b, done_t, done_b;
    double start, last;
} prog;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void progress_start(uint64_t total_tensors, uint64_t total_bytes)
{
    prog.on = verbosity > 0 && (progress_forced || isatty(2));
    prog.total_t = total_tensors;
    prog.total_b = total_bytes;
    prog.start = prog.last = now_s();
}

static void progress_draw(int final)
{
    double t = now_s() - prog.start;
    double rate = t > 0 ? prog.done_b / t / 1e6 : 0;
    char eta[32] = "";
    if (!final && prog.total_b && prog.done_b && rate > 0)
        snprintf(eta, sizeof eta, " ETA %.0fs", (prog.total_b - prog.done_b) / (rate * 1e6));
    char line[256];
    int n;
    if (prog.total_t)
        n = snprintf(line, sizeof line, "\r%s: %llu/%llu tensors, %.1f MB, %.1f MB/s%s\033[K%s", prog_name,
                     (unsigned long long)prog.done_t, (unsigned long long)prog.total_t, prog.done_b / 1e6, rate,
                     eta, final ? "\n" : "");
    else
        n = snprintf(line, sizeof line, "\r%s: %llu tensors, %.1f MB, %.1f MB/s\033[K%s", prog_name,
                     (unsigned long long)prog.done_t, prog.done_b / 1e6, rate, final ? "\n" : "");
    ssize_t rc = write(2, line, (size_t)n);
    (void)rc;
}

void progress_update(uint64_t tensors_done, uint64_t bytes_done)
{
    if (!prog.on) return;
    prog.done_t = tensors_done;
    prog.done_b = bytes_done;
    double t = now_s();
    if (t - prog.last < 1.0 / 6) return;
    prog.last = t;
    progress_draw(0);
}

void progress_end(void)
{
    if (prog.on) progress_draw(1);
    prog.on = 0;
}

/*-*** Misc ***/

void *read_file_or_die(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die_errno("%s: cannot open", path);
    struct stat st;
    if (fstat(fd, &st) < 0) die_errno("%s: stat", path);
    size_t cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 65536, n = 0;
    char *buf = malloc(cap);
    if (!buf) die("%s: out of memory", path);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf) die("%s: out of memory", path);
        }
        ssize_t k = read(fd, buf + n, cap - n - 1);
        if (k < 0) { if (errno == EINTR) continue; die_errno("%s: read error", path); }
        if (k == 0) break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = 0;
    *len = n;
    return buf;
}

int glob_list_match(const char *patterns, const char *name)
{
    char *copy = strdup(patterns), *save = NULL;
    int hit = 0;
    for (char *p = strtok_r(copy, ",", &save); p && !hit; p = strtok_r(NULL, ",", &save))
        hit = fnmatch(p, name, 0) == 0;
    free(copy);
    return hit;
}

void add_provenance_or_die(qs_header *hp, int argc, char **argv)
{
    char **args = calloc((size_t)argc + 1, sizeof *args);
    int nargs = 0;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--threads") && a + 1 < argc) { a++; continue; }
        if (!strncmp(argv[a], "--threads=", 10)) continue;
        args[nargs++] = argv[a];
    }
    if (qs_header_add_provenance(hp, prog_name, QPIPE_VERSION, nargs, args) < 0) die("out of memory");
    free(args);
}
