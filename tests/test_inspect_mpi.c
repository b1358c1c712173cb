/* MPI test of inspect's broadcast path, run under mpirun with 1, 2 and 4 ranks: rank 0 makes
 * tiny models with `shardq make-model` (single file and sharded, three families), reads config
 * + headers and validates; sq_meta_bcast (the call `shardq inspect` makes) gives every rank the
 * skeleton; every rank's hash and contents must equal rank 0's.  Failure paths: the root fails
 * (missing config field) or a non-zero root is used; every rank returns, with the same error.
 * Collectives come before any assertion, so a failing check never leaves a rank waiting. */
#include <check.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "shardq/checkpoint.h"
#include "shardq/meta.h"
#include "testutil.h"

static int g_rank, g_size;
static char g_root_dir[512];   /* made by rank 0, broadcast */

/* All ranks: true only if `ok` holds on every rank. */
static bool all(bool ok) {
    int mine = ok, every = 0;
    MPI_Allreduce(&mine, &every, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return every == 1;
}

/* Rank 0 runs make-model; the outcome is shared.  The child must not believe it is part of
 * this MPI job, so it gets a clean environment. */
static bool make_model(const char *name, const char *flags, char *dir, size_t n) {
    snprintf(dir, n, "%s/%s", g_root_dir, name);
    int ok = 1;
    if (g_rank == 0) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd,
                 "env -i PATH=\"$PATH\" TMPDIR=\"$TMPDIR\" ASAN_OPTIONS=\"$ASAN_OPTIONS\" "
                 "UBSAN_OPTIONS=\"$UBSAN_OPTIONS\" OMPI_MCA_ess_singleton_isolated=1 "
                 "OMPI_MCA_pml=ob1 OMPI_MCA_btl=self '%s' make-model --out '%s' --force %s",
                 SQ_SHARDQ_EXE, dir, flags);
        int rc = 0;
        char *out = sq_test_run(cmd, &rc);
        if (rc != 0) fprintf(stderr, "make-model failed (rc %d): %s\n", rc, out ? out : "");
        ok = rc == 0;
        free(out);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return ok;
}

/* What `shardq inspect` does on its root before the broadcast. */
static sq_meta *read_on_root(const char *dir, sq_error *err) {
    sq_model_config cfg;
    sq_meta *m = NULL;
    sq_ckpt *st = NULL;
    if (sq_config_load(dir, &cfg, err) != SQ_OK) return NULL;
    if (sq_meta_create(&cfg, &m, err) != SQ_OK) return NULL;
    if (sq_ckpt_open(dir, &st, err) != SQ_OK || sq_meta_validate(m, st, err) != SQ_OK) {
        sq_meta_destroy(m);
        m = NULL;
    }
    sq_ckpt_close(st);
    return m;
}

/* Broadcast from `root`; returns true when every rank holds a skeleton equal to the root's
 * (hash and every spec). */
static bool bcast_and_compare(const char *dir, int root, uint64_t *hash_out) {
    sq_error err;
    sq_error_init(&err, g_rank);
    sq_meta *m = g_rank == root ? read_on_root(dir, &err) : NULL;
    sq_status st = sq_meta_bcast(MPI_COMM_WORLD, root, &m, &err);
    bool ok = st == SQ_OK && m != NULL;
    if (!ok) fprintf(stderr, "rank %d: bcast: %s\n", g_rank, err.msg);
    if (!all(ok)) {
        sq_meta_destroy(m);
        return false;
    }
    /* every rank's hash, gathered on every rank */
    uint64_t h = sq_meta_hash(m);
    uint64_t *hs = malloc((size_t)g_size * sizeof *hs);
    MPI_Allgather(&h, 1, MPI_UINT64_T, hs, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    bool same = true;
    for (int r = 0; r < g_size; r++) same = same && hs[r] == hs[root];
    free(hs);
    /* and the contents: names / shapes / dtypes of every tensor against the root's bytes */
    uint8_t *buf = NULL;
    size_t n = 0;
    sq_meta_serialize(m, &buf, &n, &err);
    uint64_t len = n;
    MPI_Bcast(&len, 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
    uint8_t *rbuf = malloc(len);
    if (g_rank == root) memcpy(rbuf, buf, len);
    MPI_Bcast(rbuf, (int)len, MPI_BYTE, root, MPI_COMM_WORLD);
    same = same && len == n && memcmp(rbuf, buf, n) == 0;
    same = same && sq_hash_fnv1a64(buf, n - 8) == h;
    free(rbuf);
    free(buf);
    if (hash_out) *hash_out = h;
    sq_meta_destroy(m);
    return all(same);
}

START_TEST(every_rank_gets_the_same_skeleton) {
    static const char *fam[] = {"llama", "mistral", "qwen2"};
    for (int f = 0; f < 3; f++)
        for (int sharded = 0; sharded < 2; sharded++) {
            char name[64], flags[128], dir[1024];
            snprintf(name, sizeof name, "%s-%d", fam[f], sharded);
            snprintf(flags, sizeof flags, "--family %s --shards %d", fam[f], sharded ? 2 : 1);
            ck_assert(make_model(name, flags, dir, sizeof dir));
            uint64_t h = 0;
            ck_assert_msg(bcast_and_compare(dir, 0, &h), "%s", name);
            ck_assert_uint_ne(h, 0);
        }
}
END_TEST

START_TEST(non_zero_root) {
    char dir[1024];
    ck_assert(make_model("root-last", "--family qwen2 --preset small --shards 3", dir, sizeof dir));
    /* every rank can read the folder (same machine): the last rank is the root */
    ck_assert(bcast_and_compare(dir, g_size - 1, NULL));
}
END_TEST

START_TEST(root_failure_reaches_every_rank) {
    char dir[1024];
    ck_assert(make_model("broken", "--family llama", dir, sizeof dir));
    if (g_rank == 0) {
        char p[1100];
        snprintf(p, sizeof p, "%s/config.json", dir);
        size_t n = 0;
        char *s = sq_test_read_file(p, &n);
        char *at = s ? strstr(s, "\"hidden_size\"") : NULL;
        if (at) memcpy(at, "\"hidden_sizX\"", 13);
        if (s) sq_test_write_file(p, s, n);
        free(s);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    sq_error err;
    sq_error_init(&err, g_rank);
    sq_meta *m = g_rank == 0 ? read_on_root(dir, &err) : NULL;
    bool root_failed_alone = g_rank != 0 || (m == NULL && err.code == SQ_ERR_FORMAT);
    sq_status st = sq_meta_bcast(MPI_COMM_WORLD, 0, &m, &err);
    /* every rank: a failure naming rank 0, the file and the field */
    bool ok = root_failed_alone && st != SQ_OK && m == NULL && err.rank == 0 &&
              strstr(err.file, "config.json") != NULL &&
              strstr(err.msg, "missing required field 'hidden_size'") != NULL &&
              (g_rank == 0 ? st == SQ_ERR_FORMAT : st == SQ_ERR_PEER);
    if (!ok)
        fprintf(stderr, "rank %d: status %d, rank %d, file '%s', msg '%s'\n", g_rank, st,
                err.rank, err.file, err.msg);
    ck_assert(all(ok));

    /* a root with no skeleton and no error still ends every rank (as an internal error) */
    sq_error_init(&err, g_rank);
    m = NULL;
    st = sq_meta_bcast(MPI_COMM_WORLD, 0, &m, &err);
    ok = st != SQ_OK && m == NULL && strstr(err.msg, "no skeleton to broadcast") != NULL;
    ck_assert(all(ok));
    /* a bad root argument is refused on every rank alike, before any communication */
    st = sq_meta_bcast(MPI_COMM_WORLD, g_size, &m, &err);
    ck_assert(all(st == SQ_ERR_INVALID));
}
END_TEST

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    if (g_rank == 0) {
        char *d = sq_test_tmpdir("inspect-mpi");
        snprintf(g_root_dir, sizeof g_root_dir, "%s", d ? d : "");
        free(d);
    }
    MPI_Bcast(g_root_dir, sizeof g_root_dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (!g_root_dir[0]) {
        MPI_Finalize();
        return 1;
    }
    Suite *s = suite_create("inspect_mpi");
    TCase *tc = tcase_create("inspect_mpi");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_rank_gets_the_same_skeleton);
    tcase_add_test(tc, non_zero_root);
    tcase_add_test(tc, root_failure_reaches_every_rank);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);   /* every rank prints its own failures */
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (g_rank == 0 && !any) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root_dir);
        if (system(cmd) != 0) any = 1;
    }
    MPI_Finalize();
    return any ? EXIT_FAILURE : EXIT_SUCCESS;
}
