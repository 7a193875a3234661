/* workerenv.h - the contract between the supervisor and a worker, declared
 * once: every environment variable the supervisor hands a worker and every
 * START field, with its type, bounds, default, who sets it and who reads it.
 *
 * The supervisor fills a bt_worker_env_t and turns it into the worker's
 * environment with bt_worker_env_format (launcher/supervisor.c); the worker
 * (worker/control.c) and the tests' fake worker read it back with
 * bt_worker_env_read, checked against the same bounds; `baton worker
 * --help` prints bt_worker_env_help. The supervisor filters the variables it
 * sets out of its own inherited environment with bt_worker_env_is_ours, so a
 * stale RANK from an outer launcher never wins.
 *
 * Columns of BT_WORKER_ENV: kind (NUM: an integer, STR: text), the
 * variable, the field of bt_worker_env_t, its C type (NUM) or capacity
 * (STR), lowest and highest value (NUM), default when unset, whether it
 * must be set, who sets it (SUP: the supervisor, every worker, always;
 * USER: passed through from the environment baton runs in), who reads it,
 * and its help line. START (common/frame.h, bt_msg_start_t) has the same
 * kind of table below, BT_WORKER_START, checked by bt_worker_start_check.
 *
 * Not here: what a worker does with them (worker/pipeline.c), how frames
 * are encoded (common/frame.c).
 */
#ifndef BT_COMMON_WORKERENV_H
#define BT_COMMON_WORKERENV_H
#include <stddef.h>
#include <stdint.h>

#include "common/frame.h"

/* X(kind, VARIABLE, field, type-or-size, lo, hi, default, required, set-by, read-by, help) */
#define BT_WORKER_ENV(X)                                                                                          \
  X(NUM, RANK, rank, uint32_t, 0, BT_MAX_STAGES - 1, 0, 0, SUP, "user code (torchrun's name)",                  \
    "the stage, as torchrun names it")                                                                           \
  X(NUM, WORLD_SIZE, world_size, uint32_t, 1, BT_MAX_STAGES, 1, 0, SUP, "user code (torchrun's name)",          \
    "the stage count, as torchrun names it")                                                                     \
  X(NUM, LOCAL_RANK, local_rank, uint32_t, 0, BT_MAX_STAGES - 1, 0, 0, SUP, "user code (torchrun's name)",      \
    "the stage on this node (one node: the stage)")                                                              \
  X(NUM, LOCAL_WORLD_SIZE, local_world_size, uint32_t, 1, BT_MAX_STAGES, 1, 0, SUP,                             \
    "user code (torchrun's name)", "stages on this node")                                                        \
  X(STR, MASTER_ADDR, master_addr, 64, 0, 0, "", 0, SUP, "user code (torchrun's name)",                         \
    "the supervisor's host (127.0.0.1 for one node)")                                                            \
  X(NUM, MASTER_PORT, master_port, int, 0, 65535, 0, 0, SUP, "user code (torchrun's name)",                     \
    "unused by baton (0): the rendezvous is the control channel")                                                \
  X(NUM, BATON_CONTROL_FD, fd, int, 0, 1 << 20, 0, 1, SUP, "worker/control.c",                                   \
    "the control socket (fd 3)")                                                                                 \
  X(NUM, BATON_SUPERVISOR_PID, supervisor_pid, long, 1, INT32_MAX, 0, 1, SUP, "worker/control.c",               \
    "the supervisor; a worker whose parent is not it exits")                                                     \
  X(NUM, BATON_STAGES, nstages, uint32_t, 1, BT_MAX_STAGES, 0, 1, SUP, "worker", "worker processes of the job")  \
  X(NUM, BATON_STAGE, stage, uint32_t, 0, BT_MAX_STAGES - 1, 0, 1, SUP, "worker", "this worker's stage (< STAGES)") \
  X(NUM, BATON_CHUNKS, chunks, uint32_t, 1, 1024, 1, 0, SUP, "worker", "virtual stages per worker")              \
  X(NUM, BATON_RESTART_COUNT, restart, uint32_t, 0, INT32_MAX, 0, 0, SUP, "worker/control.c (HELLO)",           \
    "incarnations before this one")                                                                              \
  X(STR, BATON_JOB_TOKEN, token, 65, 0, 0, "", 0, SUP, "worker/transport.c",                                     \
    "the job's secret (hex) every data-plane connection proves")                                                 \
  X(NUM, BATON_HEARTBEAT_MS, heartbeat_ms, int64_t, 1, 3600 * 1000, 1000, 0, SUP, "worker/control.c",           \
    "heartbeat period (common/deadlines.h)")                                                                     \
  X(NUM, BATON_PEER_TIMEOUT_MS, peer_timeout_ms, int64_t, 1, INT64_C(1) << 40, 120000, 0, SUP,                  \
    "worker/pipeline.c", "transport deadline (common/deadlines.h)")                                              \
  X(NUM, BATON_CKPT_TIMEOUT_MS, ckpt_timeout_ms, int64_t, 1, INT64_C(1) << 40, 600000, 0, SUP,                  \
    "worker/pipeline.c", "how long a save may wait for the previous one (common/deadlines.h)")                   \
  X(STR, BATON_CKPT_DIR, ckpt_dir, 4096, 0, 0, "", 0, SUP, "worker/pipeline.c",                                 \
    "the checkpoint root shards are written into (unset: no checkpoints)")                                       \
  X(STR, BATON_RESTORE_DIR, restore_dir, 4096, 0, 0, "", 0, SUP, "worker/pipeline.c",                           \
    "the one restore source: the committed step directory START.restore_step is loaded from")                   \
  X(NUM, BATON_CKPT_COMPRESS, ckpt_compress, int, 0, 9, 0, 0, SUP, "worker/pipeline.c",                         \
    "deflate level of the shards (0: none)")                                                                     \
  X(STR, BATON_INJECT_FAULTS, faults, 1024, 0, 0, "", 0, SUP, "worker/faults.c",                                 \
    "';'-separated fault specs (first incarnation only)")                                                        \
  X(STR, BATON_SCHEDULE_CSV, schedule_csv, 4096, 0, 0, "", 0, SUP, "worker/cmd_worker.c",                       \
    "absolute path of a CSV schedule (--schedule=csv)")                                                          \
  X(STR, BATON_DATA_BIND, data_bind, 256, 0, 0, "", 0, SUP, "worker/pipeline.c",                               \
    "host/IP the data-plane listener binds and advertises, over TCP (empty: BATON_DATA_PLANE decides)")           \
  X(STR, BATON_DATA_PLANE, data_plane, 8, 0, 0, "unix", 0, USER, "worker/pipeline.c",                           \
    "unix (default: abstract Unix sockets, measured faster) or tcp")                                              \
  X(NUM, BATON_NCCL_SETUP_MS, nccl_setup_ms, int64_t, 1, INT64_C(1) << 40, 120000, 0, USER,                     \
    "worker/pipeline.c, launcher/supervisor.c", "how long creating NCCL's communicators may take")              \
  X(NUM, BATON_NCCL_SHARED_GPU, nccl_shared_gpu, int, 0, 1, 0, 0, USER, "worker/transport_nccl.c",              \
    "1: try NCCL even when two stages share a GPU")

/* X(field, type, lo, hi, set-by, read-by, help) — START, sent once every
 * stage is READY (launcher/supervisor.c send_start). */
#define BT_WORKER_START_NUM(X)                                                                                    \
  X(nstages, uint32_t, 1, BT_MAX_STAGES, "supervisor", "worker", "stages; must equal BATON_STAGES")             \
  X(first_step, int64_t, 1, INT64_MAX, "supervisor", "worker", "the first step to train (restore_step + 1)")     \
  X(last_step, int64_t, 0, INT64_MAX, "supervisor", "worker", "the last step to train (--steps)")               \
  X(restore_step, int64_t, 0, INT64_MAX, "supervisor", "worker",                                                 \
    "the step in BATON_RESTORE_DIR to load first (0: initialise)")                                               \
  X(ckpt_every, int64_t, 0, INT64_MAX, "supervisor", "worker", "save every K steps (0: only the last)")          \
  X(ckpt_last, uint32_t, 0, 1, "supervisor", "worker", "save the last step (1 with a checkpoint directory)")
#define BT_WORKER_START_DATA(X)                                                                                   \
  X(addrs, table, 0, 0, "supervisor (from READY)", "worker/transport_socket.c", "every stage's data-plane address") \
  X(gpus, table, 0, 0, "supervisor (from READY)", "worker/transport_nccl.c", "every stage's GPU (\"\" on the CPU)") \
  X(nccl_id, bytes, 0, 0, "supervisor (stage 0's READY)", "worker/transport_nccl.c", "NCCL's unique id")

#define BT_WORKER_START(X) BT_WORKER_START_NUM(X) BT_WORKER_START_DATA(X)

#define BT_WENV_FIELD_NUM(var, field, type, ...) type field;
#define BT_WENV_FIELD_STR(var, field, size, ...) char field[size];

typedef struct {
#define X(kind, ...) BT_WENV_FIELD_##kind(__VA_ARGS__)
  BT_WORKER_ENV(X)
#undef X
  int data_plane_tcp; /* derived: data_plane is "tcp" */
} bt_worker_env_t;

/* Every field at its default (strings of USER variables too). */
void bt_worker_env_defaults(bt_worker_env_t *e);

/* Reads the variables from the process environment, each checked against
 * its bounds (BATON_STAGE also against BATON_STAGES). BT_EARG with one line
 * in err naming the variable and the value. */
int bt_worker_env_read(bt_worker_env_t *e, char *err, size_t errlen);

/* The "NAME=value" strings of every SUP variable (strings only when not
 * empty), malloc'ed into out[0..]; returns how many (at most `max`), or
 * -ENOMEM (nothing left allocated). */
int bt_worker_env_format(const bt_worker_env_t *e, char **out, size_t max);

/* How many strings bt_worker_env_format can write at most. */
size_t bt_worker_env_count(void);

/* 1 when kv ("NAME=value") is a variable the supervisor sets, or the job
 * secret (BATON_SECRET, BATON_SECRET_FILE), which no worker inherits. */
int bt_worker_env_is_ours(const char *kv);

/* Checks START against BT_WORKER_START's bounds and the worker's own
 * environment (stage count; first step right after the restore step, a
 * restore source when there is one). BT_EARG with one line in err. */
int bt_worker_start_check(const bt_msg_start_t *m, const bt_worker_env_t *e, char *err, size_t errlen);

/* Help text: one line per variable and START field, two leading spaces. */
void bt_worker_env_help(char *out, size_t outlen);

#endif
