/* replay — the plain-program face of every fuzz target: runs
 * LLVMFuzzerTestOneInput over each file of tests/fuzz/corpus/<name>/ (the
 * seeds) and tests/fuzz/regress/<name>/ (every input that once crashed, hung
 * or leaked), so `make check` re-checks them without libFuzzer.
 *
 * <name> comes from argv[0] ("build/tests/test_fuzz_<name>"). Output, one
 * line per corpus: "ok - replay <name> corpus: N inputs"; an empty or missing
 * seed corpus is "not ok" (a target without seeds fuzzes blind); a missing
 * regression directory counts as 0 inputs. A crash kills the process (the
 * sanitizer build reports it), which run-all records as a failure. Extra
 * arguments replay just those files (for debugging a finding). Runs from the
 * repository root.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "replay: cannot open %s\n", path); return -1; }
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    size_t k;
    while (buf && (k = fread(buf + len, 1, cap - len, f)) > 0) {
        len += k;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb) { free(buf); buf = NULL; }
            else buf = nb;
        }
    }
    fclose(f);
    if (!buf) { fprintf(stderr, "replay: out of memory on %s\n", path); return -1; }
    /* an exact-size copy, so ASan catches reads one past the input */
    uint8_t *exact = malloc(len ? len : 1);
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file of dir in name order; returns the count, -1 if
 * the directory is missing, or -2 if a file could not be read. */
static int run_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, (size_t)cap * sizeof *names);
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (n > 1) qsort(names, (size_t)n, sizeof *names, by_name);
    int count = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        char p[4096];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
            if (getenv("REPLAY_VERBOSE")) fprintf(stderr, "replay: %s\n", p);
            if (run_file(p) < 0) bad = 1;
            else count++;
        }
        free(names[i]);
    }
    free(names);
    return bad ? -2 : count;
}

int main(int argc, char **argv)
{
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    const char *prefix = "test_fuzz_";
    const char *name = strncmp(base, prefix, strlen(prefix)) == 0 ? base + strlen(prefix) : base;
    if (argc > 1) {
        int rc = 0;
        for (int i = 1; i < argc; i++)
            if (run_file(argv[i]) < 0) rc = 1;
        printf("%s - replay %s: %d files\n", rc ? "not ok" : "ok", name, argc - 1);
        return rc;
    }
    int fail = 0;
    const char *kinds[2] = { "corpus", "regress" };
    for (int k = 0; k < 2; k++) {
        char dir[512];
        snprintf(dir, sizeof dir, "tests/fuzz/%s/%s", kinds[k], name);
        int n = run_dir(dir);
        if (n == -1 && k == 1) n = 0;
        if (n < 0 || (k == 0 && n == 0)) {
            printf("not ok - replay %s %s: %s\n", name, kinds[k], n == -2 ? "unreadable file" : "no inputs in " "tests/fuzz/corpus/");
            fail = 1;
        } else {
            printf("ok - replay %s %s: %d inputs\n", name, kinds[k], n);
        }
        fflush(stdout);
    }
    return fail;
}
