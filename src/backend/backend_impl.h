/* Private to the backend module: the vtable every implementation fills in and the common parts
 * of the handle and of a weight.  The public wrappers in backend.c check arguments that do not
 * depend on the implementation (shapes, NULLs, limits) before calling through the table, so the
 * implementations may assume them.  Must never be included outside src/backend/. */
#ifndef SHARDQ_BACKEND_IMPL_H
#define SHARDQ_BACKEND_IMPL_H

#include "shardq/backend.h"

typedef struct sq_backend_ops {
    const char *(*name)(const sq_backend *be);
    void (*destroy)(sq_backend *be);
    sq_status (*reserve)(sq_backend *be, const sq_backend_limits *lim, sq_error *err);
    sq_status (*alloc)(sq_backend *be, uint64_t n_bytes, void **out_d, sq_error *err);
    void (*free)(sq_backend *be, void *p_d);
    sq_status (*upload)(sq_backend *be, void *dst_d, const void *src, uint64_t n, sq_error *err);
    sq_status (*download)(sq_backend *be, void *dst, const void *src_d, uint64_t n, sq_error *err);
    sq_status (*copy)(sq_backend *be, void *dst_d, const void *src_d, uint64_t n, sq_error *err);
    sq_status (*memset)(sq_backend *be, void *dst_d, int v, uint64_t n, sq_error *err);
    sq_status (*sync)(sq_backend *be, sq_error *err);
    /* fill w->impl fields; w's common fields are set by the caller */
    sq_status (*weight_dense)(sq_backend *be, sq_weight *w, sq_dtype src_dtype, const void *src,
                              sq_error *err);
    /* keep src (the caller's, sq_backend_weight_dense_take) as the weight's storage: true when
     * taken (w->impl fields set), false to have it copied by weight_dense.  NULL: never. */
    bool (*weight_dense_take)(sq_backend *be, sq_weight *w, sq_dtype src_dtype, void *src);
    /* keep src, which lies in the caller's read-only file mapping (map, map_len;
     * sq_backend_weight_dense_map), as the weight's storage: true when kept (the weight then
     * owns the mapping: w->map, w->map_len, unmapped on release), false to have it copied.
     * NULL: never. */
    bool (*weight_dense_map)(sq_backend *be, sq_weight *w, sq_dtype src_dtype, const void *src,
                             void *map, size_t map_len);
    sq_status (*weight_4bit)(sq_backend *be, sq_weight *w, const sq_qtensor *q, sq_error *err);
    /* q->packed in layout G64 (cols % 64 == 0); with take it may keep q's packed / absmax
     * (setting them NULL in q) instead of copying, without take it leaves q alone.  NULL: the
     * backend has no use for G64 (backend.c hands weight_4bit a BNB copy). */
    sq_status (*weight_4bit_g64)(sq_backend *be, sq_weight *w, sq_qtensor *q, bool take,
                                 sq_error *err);
    /* a quantized ggml type (w->qf set); NULL: the backend has none (refused) */
    sq_status (*weight_ggml)(sq_backend *be, sq_weight *w, sq_ggml_type type, const void *data,
                             sq_error *err);
    /* a weight in the block-scaled form from host arrays (w->qf, code_row_bytes set); NULL:
     * qblock.c copies them with alloc + upload (the CPU backend) */
    sq_status (*weight_qblock)(sq_backend *be, sq_weight *w, const uint8_t *codes,
                               const void *scales, const void *biases, sq_error *err);
    void (*weight_release)(sq_backend *be, sq_weight *w);
    sq_status (*embed)(sq_backend *be, const sq_weight *t, const void *ids_d, int64_t n_rows,
                       void *out_d, sq_error *err);
    sq_status (*rmsnorm)(sq_backend *be, const void *x_d, const sq_weight *w, float eps,
                         int64_t n_rows, void *out_d, sq_error *err);
    sq_status (*rope)(sq_backend *be, void *q_d, void *k_d, int64_t n_rows, int n_heads,
                      int n_kv_heads, int head_dim, const int32_t *pos, const void *inv_freq_d,
                      sq_error *err);
    sq_status (*attention)(sq_backend *be, const void *q_d, const void *k_d, const void *v_d,
                           const sq_kv_layer *kv, int n_heads, int n_seqs,
                           const sq_seq_span *seqs, int64_t n_rows, void *out_d, sq_error *err);
    sq_status (*linear)(sq_backend *be, const void *x_d, int64_t n_rows, const sq_weight *w,
                        const sq_weight *bias, void *out_d, sq_error *err);
    /* n Linears of one x (checked by the wrapper: shapes, no overlaps); NULL: n linear calls */
    sq_status (*linear_multi)(sq_backend *be, const void *x_d, int64_t n_rows, int n,
                              const sq_weight *const *w, const sq_weight *const *bias,
                              void *const *out_d, sq_error *err);
    sq_status (*add)(sq_backend *be, const void *a_d, const void *b_d, int64_t n, void *out_d,
                     sq_error *err);
    sq_status (*swiglu)(sq_backend *be, const void *g_d, const void *u_d, int64_t n, void *out_d,
                        sq_error *err);
    sq_status (*sample)(sq_backend *be, const void *logits_d, int64_t n_rows, int64_t vocab,
                        const sq_sample_params *p, const uint64_t *seq_ids,
                        const uint64_t *steps, int32_t *ids_out, sq_error *err);
} sq_backend_ops;

struct sq_backend {
    const sq_backend_ops *ops;
    sq_backend_limits limits;   /* what sq_backend_reserve has sized so far */
    int n_threads;
};

/* Storage of a weight on the backend. */
typedef enum sq_wstore {
    SQ_WSTORE_F32 = 0,   /* float32 [rows, cols] */
    SQ_WSTORE_BF16,      /* bfloat16 [rows, cols] */
    SQ_WSTORE_Q4,        /* 4-bit, implementation-defined layout */
    SQ_WSTORE_QBLOCK     /* ggml type in the block-scaled integer form (sq_qblock_format) */
} sq_wstore;

struct sq_weight {
    char name[96];
    int64_t rows, cols;
    sq_wstore store;
    sq_quant_type qtype;
    int64_t blocksize;          /* 4-bit: elements per absmax block */
    uint64_t n_bytes;           /* backend memory held */
    /* implementation data */
    void *data_d;               /* dense values, or packed nibbles */
    void *absmax_d;             /* 4-bit: float32 per block */
    float code[16];             /* 4-bit: the code table (host copy) */
    /* QBLOCK: data_d = codes [rows, code_row_bytes], absmax_d = float32 scales
     * [rows, cols / qf.block_elems], bias_d = float32 biases (same shape; NULL without) */
    int ggml_type;              /* sq_ggml_type it was made from, -1 otherwise */
    sq_qblock_format qf;
    int64_t code_row_bytes;
    void *bias_d;
    /* CPU backend, QBLOCK: codes and scales interleaved by groups of 16 outputs
     * (cpu_q8i.h), made at upload when Linear takes int8 activations */
    bool q8i;
    /* a dense weight kept in a read-only mapping of its checkpoint file (weight_dense_map):
     * data_d points into it; unmapped, never freed, on release.  NULL otherwise. */
    void *map;
    size_t map_len;
};

/* A zeroed weight with its name and shape (ggml_type -1); NULL when out of memory. */
sq_weight *sq_backend_weight_new(const char *name, int64_t rows, int64_t cols);
/* qblock.c: an int8 sq_qtensor as a block-scaled (or, cols not a multiple of 32, dense F32)
 * weight; sq_backend_weight_4bit hands int8 types here. */
sq_status sq_backend_weight_int8(sq_backend *be, const char *name, const sq_qtensor *q,
                                 sq_weight **out, sq_error *err);
/* The CUDA backend's block-scaled weight from host arrays (cuda_qblock.c, CUDA builds only). */
sq_status sq_cuda_weight_qblock_upload(sq_weight *w, const uint8_t *codes, const void *scales,
                                       const void *biases, void *stream, sq_error *err);

/* The CUDA backend's ggml weights (cuda_ggml.c, built with CUDA only; stream: a cudaStream_t):
 * upload into the block-scaled form, the few-row GEMV (n_rows <= 16), a band of rows as float32
 * for the cuBLAS path, and the embedding gather. */
sq_status sq_cuda_weight_ggml_upload(sq_weight *w, sq_ggml_type type, const void *data,
                                     void *stream, sq_error *err);
sq_status sq_cuda_linear_ggml(const sq_weight *w, const void *x_d, int64_t n_rows,
                              const float *bias_d, void *out_d, void *stream, sq_error *err);
sq_status sq_cuda_ggml_band_to_f32(const sq_weight *w, int64_t row0, int64_t n, float *dst_d,
                                   void *stream, sq_error *err);
sq_status sq_cuda_embed_ggml(const sq_weight *t, const void *ids_d, int64_t n_rows, void *out_d,
                             long long *bad_d, void *stream, sq_error *err);

#endif
