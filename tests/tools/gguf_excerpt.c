/* gguf_excerpt — make the small llama.cpp reference excerpts in tests/data/gguf/
 * from the shared ts3m fixtures (too big to copy): for a few tensors, a few
 * f32 input rows as they entered llama-quantize (q_proj/k_proj in HF order,
 * one whole head, so the test applies the Q/K permutation itself), the
 * imatrix column weights from imatrix-calib.dat (legacy format), and the
 * bytes each fixture GGUF holds for those rows.
 *
 * Usage: gguf_excerpt [--full] FIXTURES_DIR OUT_DIR
 *   FIXTURES_DIR holds ts3m/model.safetensors and the ts3m-gguf files.
 * Writes OUT_DIR/excerpts.json, inputs.bin, imatrix.bin, blocks.bin and
 * prints, per case, whether ggml_quantize_row reproduces the bytes. With
 * --full it also re-quantizes every tensor of every fixture file whole and
 * compares all bytes (a one-off verification; nothing more is stored).
 */
#include "cli.h"
#include "gguf.h"
#include "ggml_quants.h"
#include "source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] = "usage: gguf_excerpt [--full] FIXTURES_DIR OUT_DIR\n";

/* Excerpted tensors: GGUF name, HF name, first HF row, row count, n_head for
 * the full-matrix permutation (0 = not permuted). */
static const struct pick {
    const char *gguf, *hf;
    int64_t row0, nrows;
    int n_head;
} picks[] = {
    { "blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 0, 32, 8 },
    { "blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 32, 32, 4 },
    { "blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", 0, 2, 0 },
    { "blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight", 0, 4, 0 },
    { "blk.2.ffn_down.weight", "model.layers.2.mlp.down_proj.weight", 100, 2, 0 },
    { "output.weight", "lm_head.weight", 0, 2, 0 },
    { "token_embd.weight", "model.embed_tokens.weight", 5, 2, 0 },
};
#define NPICKS (int)(sizeof picks / sizeof picks[0])

static const char *const files[] = {
    "ts3m-f16.gguf", "ts3m-q8_0.gguf", "ts3m-q4_0.gguf", "ts3m-q4_1.gguf", "ts3m-q5_0.gguf",
    "ts3m-q5_1.gguf", "ts3m-q2_k.gguf", "ts3m-q3_k_m.gguf", "ts3m-q4_k_m.gguf", "ts3m-q5_k_m.gguf",
    "ts3m-q6_k.gguf", "ts3m-q4_0-imatrix.gguf", "ts3m-q4_k_m-imatrix.gguf",
};
#define NFILES (int)(sizeof files / sizeof files[0])

/* Legacy imatrix: returns malloc'd per-column weights (value / ncall) for name, or NULL. */
static float *imatrix_entry(const uint8_t *b, size_t n, const char *name, int64_t *nval_out)
{
    size_t pos = 0;
    int32_t nent, len, ncall, nval;
#define RD(v) do { if (pos + sizeof(v) > n) die("imatrix: truncated"); memcpy(&(v), b + pos, sizeof(v)); pos += sizeof(v); } while (0)
    RD(nent);
    for (int32_t i = 0; i < nent; i++) {
        RD(len);
        if (len <= 0 || pos + (size_t)len > n)
            die("imatrix: bad name length");
        int match = strlen(name) == (size_t)len && memcmp(b + pos, name, (size_t)len) == 0;
        pos += (size_t)len;
        RD(ncall);
        RD(nval);
        if (nval <= 0 || pos + 4 * (size_t)nval > n)
            die("imatrix: bad entry");
        if (match) {
            float *w = malloc(4 * (size_t)nval);
            memcpy(w, b + pos, 4 * (size_t)nval);
            if (ncall > 0)
                for (int32_t j = 0; j < nval; j++)
                    w[j] /= ncall;             /* quantize.cpp load_legacy_imatrix */
            *nval_out = nval;
            return w;
        }
        pos += 4 * (size_t)nval;
    }
#undef RD
    return NULL;
}

/* HF name of a GGUF tensor name (inverse of gguf_llama_name over the source). */
static int hf_index(qsrc *src, const char *gguf_name)
{
    char nm[128];
    for (int i = 0; i < src->ntensors; i++)
        if (gguf_llama_name(src->tensors[i].name, nm, sizeof nm) == 0 && strcmp(nm, gguf_name) == 0)
            return i;
    return -1;
}

/* Re-quantize every tensor of one fixture file; returns the mismatching count. */
static int check_full(qsrc *src, const gguf_file *g, const uint8_t *im, size_t imlen, int with_im,
                      const char *label, int64_t *bytes_checked)
{
    int bad = 0;
    char *err = NULL;
    for (int64_t ti = 0; ti < g->ntensors; ti++) {
        const gguf_tensor_info *inf = &g->tensors[ti];
        int idx = hf_index(src, inf->name);
        if (idx < 0)
            die("%s: no source tensor for %s", label, inf->name);
        const qs_tensor *t = &src->tensors[idx];
        int64_t rows = t->ndim == 1 ? 1 : t->shape[0], cols = t->ndim == 1 ? t->shape[0] : t->shape[1];
        float *all = malloc((size_t)(rows * cols) * 4), *perm = malloc((size_t)(rows * cols) * 4);
        if (qsrc_read(src, idx, 0, all, (size_t)(rows * cols) * 4, &err) < 0)
            die_free(err);
        int kind = gguf_llama_qk_kind(t->name);
        if (kind)
            gguf_permute_qk_rows(all, perm, rows, cols, kind == 1 ? 8 : 4);   /* ts3m: 8 heads, 4 kv heads */
        else
            memcpy(perm, all, (size_t)(rows * cols) * 4);
        int64_t nval;
        float *w = with_im ? imatrix_entry(im, imlen, inf->name, &nval) : NULL;
        uint8_t *mine = malloc(inf->nbytes);
        ggml_quantize_rows(inf->type, perm, mine, rows, cols, w);
        if (memcmp(mine, g->base + g->data_offset + inf->offset, inf->nbytes) != 0) {
            printf("FULL MISMATCH %s %s %s\n", label, inf->name, ggml_qtype_traits(inf->type)->name);
            bad++;
        }
        *bytes_checked += (int64_t)inf->nbytes;
        free(mine);
        free(w);
        free(all);
        free(perm);
    }
    return bad;
}

static FILE *open_out(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        die_errno("%s", path);
    return f;
}

int main(int argc, char **argv)
{
    proginit(&argc, argv, "gguf_excerpt", usage);
    int full = argc > 1 && strcmp(argv[1], "--full") == 0;
    if (argc != 3 + full)
        usage_error("need FIXTURES_DIR and OUT_DIR");
    const char *fx = argv[1 + full], *out = argv[2 + full];
    int full_bad = 0;
    int64_t full_bytes = 0;
    char path[4096], *err = NULL;

    snprintf(path, sizeof path, "%s/ts3m/model.safetensors", fx);
    qsrc *src = qsrc_open(path, &err);
    if (!src)
        die_free(err);
    snprintf(path, sizeof path, "%s/ts3m-gguf/imatrix-calib.dat", fx);
    size_t imlen;
    uint8_t *im = read_file_or_die(path, &imlen);

    FILE *fin = open_out(out, "inputs.bin"), *fim = open_out(out, "imatrix.bin"), *fbl = open_out(out, "blocks.bin");
    json_t *root = json_object(), *jt = json_array(), *jc = json_array();
    uint64_t in_off = 0, im_off = 0, bl_off = 0;
    float *gg_rows[NPICKS];
    int64_t cols[NPICKS];
    int ok = 0, bad = 0;

    /* inputs: HF rows as stored, and the GGUF rows (permuted) for checking */
    for (int p = 0; p < NPICKS; p++) {
        int idx = qsrc_find(src, picks[p].hf);
        if (idx < 0)
            die("%s: no tensor %s", path, picks[p].hf);
        const qs_tensor *t = &src->tensors[idx];
        int64_t rows = t->shape[0];
        cols[p] = t->shape[1];
        float *all = malloc((size_t)(rows * cols[p]) * 4), *perm = malloc((size_t)(rows * cols[p]) * 4);
        if (qsrc_read(src, idx, 0, all, (size_t)(rows * cols[p]) * 4, &err) < 0)
            die_free(err);
        if (picks[p].n_head)
            gguf_permute_qk_rows(all, perm, rows, cols[p], picks[p].n_head);
        else
            memcpy(perm, all, (size_t)(rows * cols[p]) * 4);
        size_t n = (size_t)(picks[p].nrows * cols[p]);
        fwrite(all + picks[p].row0 * cols[p], 4, n, fin);
        gg_rows[p] = malloc(n * 4);
        memcpy(gg_rows[p], perm + picks[p].row0 * cols[p], n * 4);
        json_t *e = json_pack("{s:s,s:s,s:I,s:I,s:I,s:b,s:I}", "name", picks[p].gguf, "hf", picks[p].hf,
                              "row0", (json_int_t)picks[p].row0, "rows", (json_int_t)picks[p].nrows,
                              "cols", (json_int_t)cols[p], "permute", picks[p].n_head != 0,
                              "offset", (json_int_t)in_off);
        in_off += n * 4;
        /* imatrix weights, if the calibration covered this tensor */
        int64_t nval = 0;
        float *w = imatrix_entry(im, imlen, picks[p].gguf, &nval);
        if (w) {
            if (nval != cols[p])
                die("imatrix %s: %lld values for %lld columns", picks[p].gguf, (long long)nval, (long long)cols[p]);
            fwrite(w, 4, (size_t)nval, fim);
            json_object_set_new(e, "imatrix_offset", json_integer((json_int_t)im_off));
            im_off += (uint64_t)nval * 4;
            free(w);
        }
        json_array_append_new(jt, e);
        free(all);
        free(perm);
    }

    /* blocks of each fixture file for those rows */
    for (int fi = 0; fi < NFILES; fi++) {
        snprintf(path, sizeof path, "%s/ts3m-gguf/%s", fx, files[fi]);
        gguf_file *g = gguf_file_open(path, &err);
        if (!g)
            die_free(err);
        int with_im = strstr(files[fi], "imatrix") != NULL;
        for (int p = 0; p < NPICKS; p++) {
            int64_t ti = gguf_file_find(g, picks[p].gguf);
            if (ti < 0)
                die("%s: no tensor %s", files[fi], picks[p].gguf);
            const gguf_tensor_info *inf = &g->tensors[ti];
            size_t rb = ggml_row_size(inf->type, cols[p]);
            const uint8_t *data = g->base + g->data_offset + inf->offset + (size_t)picks[p].row0 * rb;
            size_t nb = rb * (size_t)picks[p].nrows;
            fwrite(data, 1, nb, fbl);
            /* does our quantizer reproduce it? */
            const json_t *je = json_array_get(jt, (size_t)p);
            float *w = NULL;
            int64_t nval;
            if (with_im && json_object_get(je, "imatrix_offset"))
                w = imatrix_entry(im, imlen, picks[p].gguf, &nval);
            uint8_t *mine = malloc(nb);
            ggml_quantize_rows(inf->type, gg_rows[p], mine, picks[p].nrows, cols[p], w);
            int same = memcmp(mine, data, nb) == 0;
            same ? ok++ : bad++;
            printf("%-26s %-22s %-5s %s%s\n", files[fi], picks[p].gguf, ggml_qtype_traits(inf->type)->name,
                   w ? "imatrix " : "", same ? "match" : "MISMATCH");
            json_array_append_new(jc, json_pack("{s:s,s:s,s:s,s:b,s:I,s:I}", "file", files[fi],
                                                "tensor", picks[p].gguf, "type", ggml_qtype_traits(inf->type)->name,
                                                "imatrix", w != NULL, "offset", (json_int_t)bl_off,
                                                "nbytes", (json_int_t)nb));
            bl_off += nb;
            free(mine);
            free(w);
        }
        if (full)
            full_bad += check_full(src, g, im, imlen, with_im, files[fi], &full_bytes);
        gguf_file_close(g);
    }
    if (full)
        printf("full check: %lld tensor bytes in %d files, %d tensors mismatch\n",
               (long long)full_bytes, NFILES, full_bad);
    json_object_set_new(root, "made_by", json_string("tests/tools/gguf_excerpt.c (bin/gguf_excerpt)"));
    json_object_set_new(root, "tensors", jt);
    json_object_set_new(root, "cases", jc);
    snprintf(path, sizeof path, "%s/excerpts.json", out);
    if (json_dump_file(root, path, JSON_INDENT(1) | JSON_PRESERVE_ORDER) < 0)
        die("%s: cannot write", path);
    if (fclose(fin) || fclose(fim) || fclose(fbl))
        die_errno("writing %s", out);
    printf("%d cases match, %d mismatch\n", ok, bad);
    for (int p = 0; p < NPICKS; p++)
        free(gg_rows[p]);
    json_decref(root);
    free(im);
    qsrc_close(src);
    return bad || full_bad ? 1 : 0;
}
