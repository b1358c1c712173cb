/* Owns the serve hook of sq_run: once every rank has loaded its stage and the transport is up,
 * the figures rank 0 shows are gathered and o->serve gets the stage (`shardq serve`).  Must
 * never print or exit; the only blocking MPI call is the reduce below, made while every rank
 * is here. */
#include <string.h>

#include "run_impl.h"

sq_status sq_run_call_serve(MPI_Comm comm, const sq_run_options *o, sq_transport *t, sq_stage *stage,
                            const sq_model_config *cfg, const sq_run_stage_info *infos, sq_backend *be,
                            bool nccl, double load_s, int64_t n_slots, int64_t max_seq, int64_t max_tokens,
                            const int32_t *eos, int32_t n_eos, sq_error *err) {
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    double load_max = load_s;
    if (size > 1 && MPI_Allreduce(&load_s, &load_max, 1, MPI_DOUBLE, MPI_MAX, comm) != MPI_SUCCESS)
        return sq_error_set(err, SQ_ERR_MPI, NULL, NULL, "MPI_Allreduce of the load times failed");
    sq_run_serve_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.t = t;
    ctx.stage = stage;
    ctx.cfg = cfg;
    ctx.rank = rank;
    ctx.n_ranks = size;
    ctx.n_slots = (int32_t)n_slots;
    ctx.max_seq = max_seq;
    ctx.max_tokens = max_tokens;
    ctx.eos = eos;
    ctx.n_eos = n_eos;
    ctx.stages = rank == 0 ? infos : NULL;
    ctx.backend = sq_backend_name(be);
    ctx.transport = nccl ? "nccl" : "mpi";
    ctx.load_s = load_max;
    return o->serve(o->serve_user, &ctx, err);
}
