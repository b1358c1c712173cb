/* pipeline: the stage executor and the micro-batch scheduler of pipelined generation.
 *
 * Every rank of the transport is one stage, in rank order: stage 0 embeds token ids, every
 * stage runs its layers, the last stage turns hidden states into next-token ids (norm,
 * lm_head, logits, sampling).  The math is behind sq_stage_compute (a struct of function
 * pointers + a user pointer), so the scheduler knows nothing of models or backends; tests
 * drive it with a deterministic toy compute, the model module wires the real one.
 *
 * A request is a set of sequences (prompt token ids, possibly of different lengths), given on
 * rank 0.  The sequences are split into M micro-batches of consecutive sequences.
 *  - prefill: micro-batch m goes stage 0 -> 1 -> ... -> p-1 while stage 0 starts m+1;
 *  - decode: the micro-batches cycle around the ring: the last stage samples one id per live
 *    sequence and sends ids + finished flags back to rank 0, which embeds them for that
 *    micro-batch's next step.  A sequence finishes on an EOS id (kept in its output) or after
 *    its max_new_tokens; finished sequences drop out of the rows; a micro-batch whose
 *    sequences are all finished stops circulating (rank 0 sends a stop marker down the ring,
 *    so every rank agrees on termination without another collective).
 * Messages (tag 2m: activations of micro-batch m; 2m+1: token ids back to rank 0) start with a
 * small header (micro-batch, step, rows) checked on receipt.
 *
 * Failure: inputs are validated on rank 0 and every rank's compute is checked, then all
 * ranks agree before the first token, so a bad request fails everywhere with the same
 * one-line error and nobody hangs.  During the run a rank that fails tells the others
 * (sq_transport_abort_peers) and a rank whose neighbour goes silent for the transport's
 * timeout fails naming it; every rank then returns SQ_ERR_PEER.  After a failure the caller
 * should end the job (MPI_Abort), since a dead or hung rank cannot be finalized.
 *
 * Test hook (documented, for the tests of failure handling only): when the environment has
 * SHARDQ_TEST_DIE_RANK=R, the stage with rank R dies at decode step SHARDQ_TEST_DIE_STEP
 * (default 1; 0 means during prefill), before its compute for the first micro-batch of that
 * step: SHARDQ_TEST_DIE_MODE=kill (default) raises SIGKILL, =hang stops forever without
 * polling (so its neighbours see silence).
 *
 * Ownership: sq_pipeline_run() allocates every buffer before the first token and frees them
 * before returning; the result (rank 0 only) is freed with sq_pipeline_result_destroy().
 * Never: print, exit, or block without a deadline (all waits go through the transport). */
#ifndef SHARDQ_PIPELINE_H
#define SHARDQ_PIPELINE_H

#include <stdint.h>

#include "shardq/trace.h"
#include "shardq/core.h"
#include "shardq/transport.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What one stage computes for one micro-batch step.  Only live sequences are listed; their
 * rows are packed in list order: sequence seq[i] owns rows [row0[i], row0[i] + n_tokens[i]). */
typedef struct sq_stage_batch {
    int32_t mb;               /* micro-batch index */
    int32_t step;             /* 0: prefill; k >= 1: k-th decode step */
    int32_t n_seqs;           /* live sequences in this step */
    const int32_t *seq;       /* (n_seqs) index of each in the request */
    const int32_t *n_tokens;  /* (n_seqs) prompt length in prefill, 1 in decode */
    const int32_t *pos;       /* (n_seqs) position of each sequence's first row */
    const int64_t *row0;      /* (n_seqs) first row of each sequence */
    int64_t n_rows;           /* sum of n_tokens: rows of the activation buffer */
} sq_stage_batch;

/* The math of this rank's stage.  Activation buffers hold (n_rows, hidden_dim) floats in
 * `act_mem` memory; token ids are host int32.  Every callback returns a status with a
 * one-line err; a failure ends the run on every rank. */
typedef struct sq_stage_compute {
    void *user;
    int64_t hidden_dim;       /* floats per row passed between stages */
    int64_t vocab;            /* ids must be in [0, vocab) */
    int64_t max_seq;          /* prompt length + max_new_tokens must not exceed it */
    sq_mem_kind act_mem;      /* where activation buffers live (HOST with the cpu backend) */
    /* first stage: ids (n_rows) -> act (n_rows, hidden_dim) */
    sq_status (*embed)(void *user, const sq_stage_batch *b, const int32_t *ids, float *act,
                       sq_error *err);
    /* every stage: this stage's layers, in place on act (n_rows, hidden_dim) */
    sq_status (*forward)(void *user, const sq_stage_batch *b, float *act, sq_error *err);
    /* last stage: the last row of each sequence -> one next id per sequence (n_seqs):
     * norm, lm_head, logits, sampling */
    sq_status (*sample)(void *user, const sq_stage_batch *b, const float *act, int32_t *ids,
                        sq_error *err);
    /* optional, for act_mem != HOST: allocate / free an activation buffer of n_bytes */
    void *(*alloc_act)(void *user, uint64_t n_bytes);
    void (*free_act)(void *user, void *p);
} sq_stage_compute;

typedef struct sq_pipeline_request {
    int32_t n_seqs;
    const int32_t *const *prompts;  /* (n_seqs) arrays of prompt_lens[i] ids */
    const int32_t *prompt_lens;     /* (n_seqs) */
    const int32_t *max_new_tokens;  /* (n_seqs) each >= 1 */
    const int32_t *eos_ids;         /* (n_eos) ids that end a sequence; may be NULL */
    int32_t n_eos;
} sq_pipeline_request;

typedef struct sq_pipeline_params {
    int32_t n_micro_batches;  /* 0: min(n_seqs, n_stages); above n_seqs: SQ_ERR_INVALID */
    sq_log log;
    sq_trace *trace;          /* NULL: off; else embed / forward / sample, sends and waits as
                                 spans on track 0 */
} sq_pipeline_params;

/* Time of one stage.  busy: inside compute callbacks; idle: waiting on the transport. */
typedef struct sq_stage_stats {
    int32_t rank;
    double busy_s, idle_s, wall_s;                    /* whole run */
    double prefill_busy_s, prefill_idle_s, prefill_wall_s;
    double decode_busy_s, decode_idle_s, decode_wall_s;
} sq_stage_stats;

typedef enum sq_finish_reason { SQ_FINISH_EOS = 1, SQ_FINISH_LENGTH = 2 } sq_finish_reason;

typedef struct sq_pipeline_result {
    int32_t n_seqs;
    int32_t **tokens;         /* (n_seqs) generated ids per sequence, in prompt order */
    int32_t *n_tokens;        /* (n_seqs) */
    sq_finish_reason *finish; /* (n_seqs) */
    int32_t n_stages, n_micro_batches;
    sq_stage_stats *stages;   /* (n_stages) */
    double prefill_s, decode_s;          /* wall time of the phases, slowest rank */
    int64_t prefill_tokens, decode_tokens; /* prompt tokens; generated ids after the first */
    double bubble_fraction;              /* 1 - sum(busy) / (n_stages * wall), whole run */
    double prefill_bubble_fraction;      /* the same over prefill only */
    double decode_bubble_fraction;
    double bubble_model;                 /* (p-1)/(M+p-1) */
} sq_pipeline_result;

/* Collective over the transport's ranks.  req and *out matter on rank 0 only (others pass
 * NULL for req and get *out NULL).  compute must be this rank's stage.  On failure *out is
 * NULL and every rank returns an error: the same one for a bad request or a bad compute
 * (agreed before the first token), SQ_ERR_PEER naming the rank on the others when a rank
 * fails or goes silent during the run. */
sq_status sq_pipeline_run(sq_transport *t, const sq_stage_compute *compute,
                          const sq_pipeline_params *params, const sq_pipeline_request *req,
                          sq_pipeline_result **out, sq_error *err);
void sq_pipeline_result_destroy(sq_pipeline_result *r);

/* (p-1)/(m+p-1): the idle fraction of a p-stage pipeline filled with m equal micro-batches. */
double sq_pipeline_bubble_model(int n_stages, int n_micro_batches);

#ifdef __cplusplus
}
#endif
#endif
