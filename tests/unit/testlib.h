/* testlib — the ten-line unit-test framework every tests/unit/test_*.c uses.
 * TEST(name) { CHECK(...); } defines a test; RUN(name) in main() runs it and
 * prints "ok - name" or "not ok - name"; main returns tl_summary(). Asserts
 * stay on (NDEBUG undefined). */
#ifndef QPIPE_TESTLIB_H
#define QPIPE_TESTLIB_H
#undef NDEBUG
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int tl_failed_tests, tl_passed_tests, tl_cur_failed;
#define TEST(name) static void name(void)
#define CHECK(cond) do { if (!(cond)) { tl_cur_failed = 1; \
    fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECK_MSG(cond, ...) do { if (!(cond)) { tl_cur_failed = 1; \
    fprintf(stderr, "  %s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
#define CHECK_NEAR(a, b, tol) do { double tl_a = (a), tl_b = (b); \
    if (!(fabs(tl_a - tl_b) <= (tol))) { tl_cur_failed = 1; \
    fprintf(stderr, "  %s:%d: %s = %.9g, expected %s = %.9g (tol %g)\n", __FILE__, __LINE__, \
            #a, tl_a, #b, tl_b, (double)(tol)); } } while (0)
#define RUN(name) do { tl_cur_failed = 0; name(); \
    if (tl_cur_failed) { tl_failed_tests++; printf("not ok - %s\n", #name); } \
    else { tl_passed_tests++; printf("ok - %s\n", #name); } fflush(stdout); } while (0)
static inline int tl_summary(void) { return tl_failed_tests ? 1 : 0; }

/* A whole file in memory, NUL-terminated (not counted in *len); NULL if it
 * cannot be read. */
static inline void *tl_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = '\0'; *len = (size_t)n; }
    return buf;
}
#endif
