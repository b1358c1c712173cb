/* Private to the runtime: the serve hook of sq_run (serve_hook.c). */
#ifndef SHARDQ_RUN_IMPL_H
#define SHARDQ_RUN_IMPL_H

#include "shardq/runtime.h"

/* Every rank: the slowest load to everyone, then o->serve with the loaded stage. */
sq_status sq_run_call_serve(MPI_Comm comm, const sq_run_options *o, sq_transport *t, sq_stage *stage,
                            const sq_model_config *cfg, const sq_run_stage_info *infos, sq_backend *be,
                            bool nccl, double load_s, int64_t n_slots, int64_t max_seq, int64_t max_tokens,
                            const int32_t *eos, int32_t n_eos, sq_error *err);

#endif
