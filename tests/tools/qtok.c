/* qtok — debugging helper for formats/tokenizer: encode text to ids or
 * decode ids to text with a model directory's tokenizer.json.
 *
 *   qtok MODEL_DIR [FILE]            ids of FILE (default stdin), BOS first, one line
 *   qtok --no-bos MODEL_DIR [FILE]   the same without BOS
 *   qtok --u32 MODEL_DIR [FILE]      ids as uint32 little-endian (binary)
 *   qtok --pieces MODEL_DIR [FILE]   "id piece" per line
 *   qtok --decode MODEL_DIR [FILE]   FILE holds ids (whitespace-separated); prints the text
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "tokenizer.h"

static const char usage[] =
    "usage: qtok [--no-bos] [--u32 | --pieces | --decode [--keep-special]] MODEL_DIR [FILE]\n"
    "Encode FILE (default stdin) with MODEL_DIR/tokenizer.json and print the ids,\n"
    "or with --decode read ids and print the text.\n";

struct cmdline {
    int no_bos, u32, pieces, decode, keep_special;
    const char *dir, *file;
};

static void parse_cmdline(int argc, char **argv, struct cmdline *c)
{
    memset(c, 0, sizeof *c);
    int pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-bos")) c->no_bos = 1;
        else if (!strcmp(a, "--u32")) c->u32 = 1;
        else if (!strcmp(a, "--pieces")) c->pieces = 1;
        else if (!strcmp(a, "--decode")) c->decode = 1;
        else if (!strcmp(a, "--keep-special")) c->keep_special = 1;
        else if (a[0] == '-' && a[1]) usage_error("unknown option '%s'", a);
        else if (pos == 0) { c->dir = a; pos++; }
        else if (pos == 1) { c->file = a; pos++; }
        else usage_error("too many arguments");
    }
    if (!c->dir)
        usage_error("MODEL_DIR is required");
    if (c->u32 + c->pieces + c->decode > 1)
        usage_error("--u32, --pieces and --decode exclude each other");
}

static char *read_input(const char *file, size_t *len)
{
    if (file && strcmp(file, "-") != 0)
        return read_file_or_die(file, len);
    size_t cap = 65536, n = 0, got;
    char *buf = malloc(cap + 1);
    if (!buf)
        die("out of memory");
    while ((got = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += got;
        if (n == cap && !(buf = realloc(buf, (cap *= 2) + 1)))
            die("out of memory");
    }
    if (ferror(stdin))
        die_errno("cannot read stdin");
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void run_decode(const tokenizer *tk, const char *text, int keep_special)
{
    size_t n = 0, cap = 1024;
    uint32_t *ids = malloc(cap * sizeof *ids);
    char *end;
    if (!ids)
        die("out of memory");
    for (const char *p = text;; p = end) {
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p)
            break;
        if (errno || v > UINT32_MAX)
            die("bad id near '%.20s'", p);
        if (n == cap && !(ids = realloc(ids, (cap *= 2) * sizeof *ids)))
            die("out of memory");
        ids[n++] = (uint32_t)v;
    }
    char *s = tokenizer_decode(tk, ids, n, !keep_special);
    if (!s)
        die("cannot decode: an id is out of range (vocab size %zu)", tokenizer_vocab_size(tk));
    write_or_die(1, s, strlen(s), "stdout");
    free(s);
    free(ids);
}

static void run_encode(const tokenizer *tk, const struct cmdline *c, const char *text, size_t len)
{
    uint32_t *ids = NULL;
    char *err = NULL;
    int64_t n = tokenizer_encode(tk, text, len, !c->no_bos, &ids, &err);
    if (n < 0)
        die_free(err);
    if (c->u32) {
        refuse_tty(1, "ids");
        for (int64_t i = 0; i < n; i++) {
            unsigned char b[4] = { (unsigned char)ids[i], (unsigned char)(ids[i] >> 8),
                                   (unsigned char)(ids[i] >> 16), (unsigned char)(ids[i] >> 24) };
            write_or_die(1, b, 4, "stdout");
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            if (c->pieces)
                printf("%u %s\n", ids[i], tokenizer_piece(tk, ids[i]));
            else
                printf(i ? " %u" : "%u", ids[i]);
        }
        if (!c->pieces)
            putchar('\n');
    }
    free(ids);
}

int main(int argc, char **argv)
{
    struct cmdline c;
    proginit(&argc, argv, "qtok", usage);
    parse_cmdline(argc, argv, &c);
    char *err = NULL;
    tokenizer *tk = tokenizer_load_dir(c.dir, &err);
    if (!tk)
        die_free(err);
    size_t len = 0;
    char *text = read_input(c.file, &len);
    if (c.decode)
        run_decode(tk, text, c.keep_special);
    else
        run_encode(tk, &c, text, len);
    free(text);
    tokenizer_free(tk);
    close_stdout_or_die();
    return EXIT_OK;
}
