/* qbench_llama — forward-pass speed of the engine on a synthetic Llama.
 *
 * Builds an 8-layer, hidden-2048 Llama (32 heads, 8 KV heads, MLP 5632,
 * vocab 4096; deterministic weights made in memory, no file) and reports
 * forward tokens/s over one window for 1 and 2 threads (checking that both
 * give the same logits, byte for byte), then the matmul kernel's GFLOP/s on
 * a (window x 2048) x (2048 x 2048) product.
 * Usage: qbench_llama [WINDOW=128] [LAYERS=8]
 *        qbench_llama --stream [LAYERS=8] > model.qs
 * The second form writes the same model (bf16, config.json carried, in HF
 * order: embedding, layers, norm, head) as a qstream on stdout, for
 * `qpack -o DIR/` to make a checkpoint of it (tests/bench/bench_memory_engine.sh).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dtype.h"
#include "kernels.h"
#include "llama.h"
#include "qstream.h"

enum { DIM = 2048, HID = 5632, NH = 32, NKV = 8, VOCAB = 4096 };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Shapes from the name; values a cheap hash, scaled like a trained model's. */
static int bench_get(void *ctx, const char *name, float **data, int64_t *shape, int *ndim, char **errp)
{
    (void)errp;
    int layers = *(int *)ctx, l = -1, hd = DIM / NH;
    char rest[96] = "";
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight")) {
        shape[0] = VOCAB; shape[1] = DIM; *ndim = 2;
    } else if (!strcmp(name, "model.norm.weight")) {
        shape[0] = DIM; *ndim = 1;
    } else if (sscanf(name, "model.layers.%d.%95s", &l, rest) == 2 && l < layers) {
        *ndim = 2;
        if (strstr(rest, "norm")) { shape[0] = DIM; *ndim = 1; }
        else if (strstr(rest, ".bias")) return 0;
        else if (strstr(rest, "q_proj")) { shape[0] = NH * hd; shape[1] = DIM; }
        else if (strstr(rest, "k_proj") || strstr(rest, "v_proj")) { shape[0] = NKV * hd; shape[1] = DIM; }
        else if (strstr(rest, "o_proj")) { shape[0] = DIM; shape[1] = NH * hd; }
        else if (strstr(rest, "down_proj")) { shape[0] = DIM; shape[1] = HID; }
        else { shape[0] = HID; shape[1] = DIM; }
    } else {
        return 0;
    }
    int64_t n = *ndim == 2 ? shape[0] * shape[1] : shape[0];
    float *d = malloc((size_t)n * sizeof *d);
    if (!d) return -1;
    uint32_t s = 2166136261u;
    for (const char *p = name; *p; p++) s = (s ^ (unsigned char)*p) * 16777619u;
    int norm = *ndim == 1;
    for (int64_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        float u = (float)(s >> 8) / 16777216.0f - 0.5f;
        d[i] = norm ? 1.0f + 0.1f * u : 0.04f * u;
    }
    *data = d;
    return 1;
}

static void config_json(char *cfg, size_t n, int layers)
{
    snprintf(cfg, n, "{\"model_type\": \"llama\", \"hidden_size\": %d, \"intermediate_size\": %d,"
             " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d,"
             " \"vocab_size\": %d, \"max_position_embeddings\": 4096, \"tie_word_embeddings\": false}",
             DIM, HID, layers, NH, NKV, VOCAB);
}

/* The model as a bf16 qstream on stdout. */
static int write_stream(int layers)
{
    static const char *const per_layer[] = {
        "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    };
    enum { NPL = sizeof per_layer / sizeof *per_layer };
    int nt = 3 + layers * NPL;
    char (*names)[96] = malloc((size_t)nt * sizeof *names);
    snprintf(names[0], 96, "model.embed_tokens.weight");
    for (int l = 0; l < layers; l++)
        for (int i = 0; i < NPL; i++)
            snprintf(names[1 + l * NPL + i], 96, "model.layers.%d.%s.weight", l, per_layer[i]);
    snprintf(names[nt - 2], 96, "model.norm.weight");
    snprintf(names[nt - 1], 96, "lm_head.weight");
    char cfg[512], *err = NULL;
    config_json(cfg, sizeof cfg, layers);
    qs_header h;
    qs_header_init(&h);
    json_object_set_new(h.meta, "kind", json_string("model"));
    qs_header_add_file(&h, "config.json", cfg, strlen(cfg));
    qs_tensor *t = calloc((size_t)nt, sizeof *t);
    for (int i = 0; i < nt; i++) {
        int64_t shape[QS_MAX_DIMS];
        int ndim;
        float *d = NULL;
        bench_get(&layers, names[i], &d, shape, &ndim, &err);   /* shapes only: data dropped */
        free(d);
        qs_tensor_init(&t[i], names[i], DT_BF16, ndim, shape);
        qs_header_manifest_add(&h, &t[i]);
    }
    qs_writer *w = qs_writer_open_fd(1, &h, 0, &err);
    int rc = w ? 0 : -1;
    for (int i = 0; rc == 0 && i < nt; i++) {
        int64_t shape[QS_MAX_DIMS], n;
        int ndim;
        float *d = NULL;
        bench_get(&layers, names[i], &d, shape, &ndim, &err);
        n = qs_numel(ndim, shape);
        uint16_t *b = malloc((size_t)n * sizeof *b);
        dtype_from_f32(DT_BF16, d, b, (size_t)n);
        rc = qs_writer_put(w, &t[i], b);
        free(b);
        free(d);
    }
    if (w && qs_writer_close(w, &err) < 0)
        rc = -1;
    if (rc < 0)
        fprintf(stderr, "qbench_llama: %s\n", err ? err : "write error");
    for (int i = 0; i < nt; i++)
        qs_tensor_clear(&t[i]);
    free(t);
    free(names);
    qs_header_clear(&h);
    return rc < 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--stream"))
        return write_stream(argc > 2 ? atoi(argv[2]) : 8);
    int win = argc > 1 ? atoi(argv[1]) : 128, layers = argc > 2 ? atoi(argv[2]) : 8;
    if (win < 1 || win > 2048 || layers < 1) { fprintf(stderr, "qbench_llama: bad arguments\n"); return 2; }
    char cfg[512], *err = NULL;
    config_json(cfg, sizeof cfg, layers);
    double t0 = now();
    llama_model *m = llama_load(cfg, strlen(cfg), bench_get, &layers, &err);
    if (!m) { fprintf(stderr, "qbench_llama: %s\n", err); return 1; }
    printf("synthetic Llama: %d layers, hidden %d, MLP %d, %d heads / %d KV, vocab %d (built in %.1f s)\n",
           layers, DIM, HID, NH, NKV, VOCAB, now() - t0);
    uint32_t *tok = malloc((size_t)win * sizeof *tok);
    for (int i = 0; i < win; i++) tok[i] = (uint32_t)(i * 37 % VOCAB);
    float *lg[2] = { malloc((size_t)win * VOCAB * sizeof(float)), malloc((size_t)win * VOCAB * sizeof(float)) };
    double params = (double)layers * (2.0 * DIM * DIM + 2.0 * DIM * (DIM / NH) * NKV + 3.0 * DIM * HID) +
                    (double)VOCAB * DIM;
    llama_state *s = llama_state_new(m, win, win, &err);
    for (int th = 1; th <= 2; th++) {
        llama_set_threads(m, th);
        llama_state_reset(s);
        t0 = now();
        if (llama_eval(m, s, tok, win, lg[th - 1], 0, &err) < 0) { fprintf(stderr, "qbench_llama: %s\n", err); return 1; }
        double dt = now() - t0;
        printf("forward, %d thread%s: %7.1f tokens/s  (%d-token window in %.2f s, %.1f GFLOP/s of linears)\n",
               th, th > 1 ? "s" : " ", win / dt, win, dt, 2 * params * win / dt / 1e9);
    }
    printf("1 and 2 threads give identical logits: %s\n",
           memcmp(lg[0], lg[1], (size_t)win * VOCAB * sizeof(float)) ? "NO" : "yes");
    /* the GEMM kernel alone */
    float *x = malloc((size_t)win * DIM * sizeof *x), *w = malloc((size_t)DIM * DIM * sizeof *w);
    float *y = malloc((size_t)win * DIM * sizeof *y);
    for (int i = 0; i < win * DIM; i++) x[i] = (float)(i % 17) * 0.01f;
    for (int i = 0; i < DIM * DIM; i++) w[i] = (float)(i % 13) * 0.01f;
    int reps = 3;
    t0 = now();
    for (int r = 0; r < reps; r++) kern_matmul(y, x, w, NULL, win, DIM, DIM, 0, DIM);
    double dt = (now() - t0) / reps;
    printf("matmul kernel (%s), 1 thread: (%d x %d) x (%d x %d)^T  %.1f GFLOP/s\n",
           kern_have_avx2() ? "AVX2+FMA" : "scalar _ref", win, DIM, DIM, DIM, 2.0 * win * DIM * DIM / dt / 1e9);
    free(x); free(w); free(y); free(tok); free(lg[0]); free(lg[1]);
    llama_state_free(s);
    llama_free(m);
    return 0;
}
