/* ckpt.h - sharded HDF5 checkpoints: write, commit, restore, reshard, retain.
 *
 * For the single-process trainer, the pipeline workers and the supervisor.
 * It works on a GENERIC description of tensors (global layer, index within
 * the layer's declared order, name, kind, shape, float32 data) and knows
 * nothing of the model: the configuration is opaque canonical text that is
 * stored and handed back. It does not decide when to checkpoint, nor check
 * that a configuration matches (the caller compares the text it gets back).
 *
 * On disk (DESIGN.md §6):
 *
 *   ROOT/LOCK                         one job at a time (bt_ckpt_lock_*)
 *   ROOT/step-00000012.tmp/           shards being written, never loaded
 *   ROOT/step-00000012/               committed: holds MANIFEST.json
 *       stage-000-of-004.h5           one shard per stage
 *       MANIFEST.json                 written last (temp, fsync, rename)
 *   ROOT/latest                       "step-00000012\n" (temp + rename)
 *
 * A shard: root attributes format, format_version, step, stage, stages,
 * chunks, seed, adam_t, layer_count, layers (the global layers it holds),
 * model_config, run_settings; datasets /layers/<LLLLLL>/<name> and
 * /optim/<LLLLLL>/{m,v}/<name> (LLLLLL = global layer, zero-padded to 6),
 * float32 little-endian, each with attributes crc (CRC-32 of its raw bytes)
 * and index (declared order). Readers address datasets by name and sort by
 * (layer, kind, index): nothing depends on HDF5's alphabetical listing.
 *
 * Protocol: each stage saves its shard into step-S.tmp (temp file, fsync,
 * rename, fsync of the directory) and reports {stage, step, file, size, CRC}
 * (bt_msg_shard_t); bt_ckpt_commit() then checks every report, writes the
 * manifest, renames step-S.tmp to step-S, fsyncs the root and moves
 * `latest`. Restore scans step-* directories (it does not trust `latest`),
 * newest first, and takes the first that verifies.
 *
 * Threads: HDF5 (Debian's thread-safe 1.10 build) serialises every call on
 * one global lock; every public function here silences HDF5's automatic
 * error printing for the calling thread itself.
 */
#ifndef BT_CHECKPOINT_CKPT_H
#define BT_CHECKPOINT_CKPT_H
#include <stddef.h>
#include <stdint.h>

#include "common/frame.h"
#include "common/hash.h"

#define BT_CKPT_FORMAT_VERSION 1
#define BT_CKPT_MAX_DIMS 4
#define BT_CKPT_NAME_MAX BT_HASH_NAME_MAX /* names feed the parameter hash */
#define BT_CKPT_MAX_LAYERS 100000         /* six digits in group names */
#define BT_CKPT_MANIFEST "MANIFEST.json"

typedef enum { BT_CKPT_PARAM = 0, BT_CKPT_ADAM_M = 1, BT_CKPT_ADAM_V = 2 } bt_ckpt_kind_t;

typedef struct {
  uint32_t layer;                 /* global layer index */
  uint32_t index;                 /* position in the layer type's tensor order */
  char name[BT_CKPT_NAME_MAX];    /* [A-Za-z0-9_.-]+ */
  int kind;                       /* bt_ckpt_kind_t */
  int ndim;                       /* 1..BT_CKPT_MAX_DIMS */
  uint64_t dims[BT_CKPT_MAX_DIMS];
  float *data;                    /* row-major; never owned by this module */
} bt_ckpt_tensor_t;

/* Root attributes of a shard (and of the manifest). Strings are borrowed
 * when handed in, owned (free with bt_ckpt_meta_free) when handed out. */
typedef struct {
  int64_t step;          /* updates done: a resumed run trains step+1 next */
  uint32_t stage, stages, chunks;
  uint32_t layer_count;  /* layers of the whole model (global 0..count-1) */
  uint64_t seed;
  int64_t adam_t;        /* the optimizer's step count */
  char *model_config;    /* canonical text, opaque here */
  char *run_settings;    /* canonical text, opaque here */
} bt_ckpt_meta_t;

void bt_ckpt_meta_free(bt_ckpt_meta_t *m);

typedef struct {
  int deflate;     /* 0: none; 1..9: gzip level (chunked, ~1 MiB chunks) */
  int shuffle;     /* byte shuffle before deflate */
  int fletcher32;  /* HDF5's per-chunk checksum */
} bt_ckpt_opts_t;

size_t bt_ckpt_numel(const bt_ckpt_tensor_t *t);
/* "stage-003-of-004.h5" */
void bt_ckpt_shard_name(uint32_t stage, uint32_t stages, char *out, size_t size);
/* ROOT/step-00000012 or, with tmp, ROOT/step-00000012.tmp. -ENAMETOOLONG. */
int bt_ckpt_step_path(const char *root, int64_t step, int tmp, char *out, size_t size);

/* ---- writing one shard (synchronously) ---- */

/* Writes this stage's shard of step meta->step into ROOT/step-S.tmp/ (made
 * when missing, as ROOT is) durably and fills `report`. Refuses a snapshot
 * holding NaN or Inf (BT_ENONFINITE, naming the tensor), a bad description
 * (BT_EARG); a full disk or I/O error returns its code and leaves every
 * committed step untouched. */
int bt_ckpt_save(const char *root, const bt_ckpt_meta_t *meta, const bt_ckpt_tensor_t *t,
                 size_t n, const bt_ckpt_opts_t *opts, bt_msg_shard_t *report);

/* ---- asynchronous saving ---- */

typedef struct {
  int rc;                /* 0 or the save's error code */
  int64_t step;
  bt_msg_shard_t shard;  /* the report, valid when rc == 0 */
  double write_s;        /* seconds the writer thread spent */
  /* The snapshot the shard was written from: valid only inside the done
   * callback (NULL in bt_ckpt_writer_wait's copy). */
  const bt_ckpt_meta_t *meta;
  const bt_ckpt_tensor_t *t;
  size_t n;
} bt_ckpt_result_t;

/* Called on the writer thread when a save ends (success or failure). */
typedef void (*bt_ckpt_done_fn)(void *arg, const bt_ckpt_result_t *r);

typedef struct bt_ckpt_writer bt_ckpt_writer_t;

int bt_ckpt_writer_create(bt_ckpt_writer_t **out, const char *root, const bt_ckpt_opts_t *opts,
                          bt_ckpt_done_fn done, void *arg);
/* Waits (at most timeout_ms, else BT_ETIMEOUT) for the previous save, since
 * a skipped save would leave a step that can never commit; then copies the
 * tensors and meta into the writer's snapshot buffer and returns: the copy
 * is all the caller waits for. The writer thread writes the shard. */
int bt_ckpt_save_async(bt_ckpt_writer_t *w, const bt_ckpt_meta_t *meta,
                       const bt_ckpt_tensor_t *t, size_t n, int64_t timeout_ms);
/* Allocates the snapshot buffer for tensors described like t (data
 * ignored) and touches its pages, so that the first save costs the caller
 * a memcpy too rather than page faults on a fresh buffer. Optional. */
int bt_ckpt_writer_reserve(bt_ckpt_writer_t *w, const bt_ckpt_tensor_t *t, size_t n,
                           int64_t timeout_ms);
/* Copies tensor i (numel floats) into dst; 0 or a negative code. */
typedef int (*bt_ckpt_fill_fn)(void *arg, size_t i, float *dst);
/* The same, but each tensor is copied into the snapshot by fill() (e.g.
 * bt_stage_tensor_get, straight from device memory): one copy instead of a
 * host staging buffer and then the snapshot. t[i].data is ignored. A fill
 * error is returned and nothing is queued. */
int bt_ckpt_save_async_fill(bt_ckpt_writer_t *w, const bt_ckpt_meta_t *meta,
                            const bt_ckpt_tensor_t *t, size_t n, bt_ckpt_fill_fn fill,
                            void *arg, int64_t timeout_ms);
/* Waits (at most timeout_ms) until no save is in flight; *last gets the
 * result of the most recent save (rc BT_EARG when there was none). */
int bt_ckpt_writer_wait(bt_ckpt_writer_t *w, int64_t timeout_ms, bt_ckpt_result_t *last);
/* Lets the in-flight save finish, stops the thread, frees everything. */
void bt_ckpt_writer_destroy(bt_ckpt_writer_t *w);
/* Called on the writer thread after dataset i (0-based) of the n in the
 * shard of `step` is written into its temporary file, before HDF5 flushes
 * or closes it: fault injection (worker/faults.c) dies here to leave a torn
 * shard. It must not touch the file. */
typedef void (*bt_ckpt_write_hook_fn)(void *arg, int64_t step, size_t i, size_t n);
/* Sets the hook (NULL: none); call before the first save. */
void bt_ckpt_writer_set_hook(bt_ckpt_writer_t *w, bt_ckpt_write_hook_fn fn, void *arg);

/* Lineage (checkpoint/lineage.c): the job that committed a step and the
 * step its incarnation restored from. A job id is 32 lowercase hex digits,
 * made at a job's first start and kept by every restart and every rerun
 * that continues its checkpoint directory; `--resume PATH` starts a new job
 * whose parent is PATH. A step committed before lineage existed has job ""
 * and no parent. */
#define BT_CKPT_JOB_LEN 32

typedef struct {
  char job[BT_CKPT_JOB_LEN + 1];         /* "" unknown (an older step) */
  char parent_job[BT_CKPT_JOB_LEN + 1];  /* the parent step's job ("" unknown) */
  int64_t parent_step;                   /* -1: a fresh start, no parent */
} bt_ckpt_lineage_t;

/* ---- commit ---- */

/* Makes step `step` of ROOT real from its shard reports (one per stage, any
 * order): checks each shard's size and root attributes (same step, same
 * configuration, stages and chunks, one report per stage) and that every
 * global layer 0..layer_count-1 is held by exactly one shard
 * (BT_ECORRUPT naming the gap or duplicate); reads no tensor (each save
 * refused NaN/Inf in its snapshot, and a shard changed since no longer
 * matches the CRC that goes into the manifest); removes stray files from
 * step-S.tmp; writes MANIFEST.json (temp, fsync, rename); renames the
 * directory to step-S; fsyncs ROOT; moves `latest`. Called in-process by
 * `baton train` and by the supervisor with the workers' reports. */
int bt_ckpt_commit(const char *root, int64_t step, const bt_msg_shard_t *shards, size_t n);
/* The same, recording `lin` (job and parent; NULL: none) in the manifest.
 * `baton train` and the supervisor commit this way. */
int bt_ckpt_commit_lineage(const char *root, int64_t step, const bt_msg_shard_t *shards, size_t n,
                           const bt_ckpt_lineage_t *lin);

/* The same for a one-stage job, from inside its writer's done callback
 * (r->meta and r->t valid): the shard's attributes and layers are taken
 * from the snapshot just written rather than read back from the file.
 * BT_EARG for a failed save or a job of more than one stage. */
int bt_ckpt_commit_saved(const char *root, const bt_ckpt_result_t *r, const bt_ckpt_lineage_t *lin);

/* ---- reading ---- */

typedef struct {
  uint32_t stage;
  char file[256];  /* relative to the step directory */
  uint64_t size;
  uint32_t crc;
} bt_ckpt_shard_info_t;


typedef struct {
  int version;
  bt_ckpt_meta_t meta;            /* stage is 0 here */
  bt_ckpt_lineage_t lineage;      /* "job" and "parent" of MANIFEST.json */
  uint32_t nshards;
  bt_ckpt_shard_info_t *shards;
  uint32_t *layer_shard;          /* [layer_count]: index into shards */
} bt_ckpt_manifest_t;

void bt_ckpt_manifest_free(bt_ckpt_manifest_t *m);
/* Strict reader of exactly the shape bt_ckpt_commit writes: BT_EFORMAT
 * (with a message in err) on anything else; -errno when unreadable. */
int bt_ckpt_manifest_read(const char *path, bt_ckpt_manifest_t *m, char *err, size_t errlen);

/* How much verification reads. */
enum {
  BT_CKPT_CHECK_CHEAP = 0,  /* manifest parses, every shard present, right size */
  BT_CKPT_CHECK_CRC = 1,    /* + whole-file CRC of every shard, their root
                               attributes and the layer map (restore) */
  BT_CKPT_CHECK_DEEP = 2,   /* + every dataset read and its CRC checked */
};

/* Receives one line per problem found. */
typedef void (*bt_ckpt_problem_fn)(void *arg, const char *line);

typedef struct {
  char dir[4096];
  int64_t step;
  bt_ckpt_manifest_t man;
  /* [shard]: 1 when step_open verified the shard's whole-file CRC, so a
   * load right after need not check each dataset's CRC over the same bytes
   * again (the cost of a second pass is what restore's speed is about). */
  uint8_t file_crc_ok[BT_MAX_STAGES];
} bt_ckpt_step_t;

/* Reads and verifies one committed step directory (BT_ENOTCKPT when it has
 * no manifest, BT_ECORRUPT/BT_ECRC/BT_EFORMAT/BT_EVERSION on a problem,
 * each problem also sent to `problem` when given). */
int bt_ckpt_step_open(const char *step_dir, int level, bt_ckpt_step_t *st,
                      bt_ckpt_problem_fn problem, void *arg);
void bt_ckpt_step_close(bt_ckpt_step_t *st);

/* Fills the data of every wanted tensor (layer, kind, name, shape and index
 * given by the caller) from whichever shard holds its layer, checking the
 * dataset's CRC (unless step_open verified that shard's whole-file CRC). A tensor missing from the checkpoint or of another shape
 * or index gives BT_ECONFIG (the model differs), a damaged one BT_ECRC or
 * BT_EHDF5. Any set of layers: this is resharding. */
int bt_ckpt_step_load(const bt_ckpt_step_t *st, bt_ckpt_tensor_t *want, size_t n);

/* Committed steps of ROOT (a directory named step-NNNNNNNN holding a
 * manifest), newest first; *steps is malloc'ed. */
int bt_ckpt_list_steps(const char *root, int64_t **steps, size_t *n);

/* The newest committed step of ROOT that verifies at `level` (CRC is what
 * restore uses); a step that fails is skipped with a warning saying why.
 * -ENOENT when there is none. */
int bt_ckpt_open_latest(const char *root, int level, bt_ckpt_step_t *st);

/* open_latest + step_load, falling back to the previous committed step
 * when a step fails its checks or its load (but not on BT_ECONFIG: an
 * older step of the same job would not fit either). The whole-file CRCs
 * are checked for the shards holding the wanted layers only (every shard
 * must still be present with its size). `want` may be NULL with n 0 to
 * only find the step (all shards checked). On success *st stays open. */
int bt_ckpt_restore(const char *root, bt_ckpt_tensor_t *want, size_t n, bt_ckpt_step_t *st);

/* ---- the parameter hash (hash.c) ---- */

/* The parameter hash (DESIGN.md §8, the one `baton train --hash` prints)
 * of the parameters in shard files, read from disk with each dataset's CRC
 * checked. A shard or tensor that cannot be read is one line to `problem`
 * (may be NULL) and the others are still read; the first problem's code is
 * returned. Parameters that share a layer and index: BT_ECORRUPT. */
int bt_ckpt_hash_files(const char *const *files, size_t n, bt_hash128_t *out,
                       bt_ckpt_problem_fn problem, void *arg);
/* The same over every shard of a committed step directory, verified at
 * CRC level first. */
int bt_ckpt_step_hash(const char *step_dir, bt_hash128_t *out);

/* ---- lineage (lineage.c) ---- */

/* A fresh job id: 32 hex digits from getrandom (time and pid without it). */
void bt_ckpt_job_new(char out[BT_CKPT_JOB_LEN + 1]);
/* 1 when s is a job id (32 lowercase hex digits). */
int bt_ckpt_job_valid(const char *s);

/* The newest committed step of ROOT older than `before` (INT64_MAX: any)
 * that job `job` committed and that verifies at CRC level, opened into *st
 * (close it with bt_ckpt_step_close). A newer step of the job that fails
 * its checks is skipped with a warning saying why; steps of other jobs are
 * never considered, so a restart cannot load a step outside its lineage.
 * Job "" picks among steps committed before lineage existed. -ENOENT when
 * there is none. */
int bt_ckpt_job_pick(const char *root, const char *job, int64_t before, bt_ckpt_step_t *st);

/* Committed steps of ROOT that a job resuming from `from` (an open step)
 * with ROOT as its checkpoint directory must not run beside: every step
 * newer than from's, and every older one that is not on from's lineage
 * (not from's own job, nor an ancestor through the parent chain). `from`
 * itself, when it lies in ROOT, is never listed. Newest first, malloc'ed;
 * *n 0 when there are none. */
int bt_ckpt_lineage_conflicts(const char *root, const bt_ckpt_step_t *from, int64_t **steps,
                              size_t *n);

/* Moves the committed steps `steps` of ROOT into ROOT/aside-<UTC time>/
 * (made; renames only, nothing is deleted), so that the user can inspect
 * or move them back. The folder's path goes to `aside`. */
int bt_ckpt_move_aside(const char *root, const int64_t *steps, size_t n, char *aside,
                       size_t asidelen);

/* `--resume PATH` (the open step `from`) into the checkpoint directory
 * ROOT, as `baton train` and `baton run` both do it: without conflicts 0
 * and msg ""; with conflicts and move_aside, they are moved, 0 and msg says
 * where; without move_aside, 1 and msg is the refusal naming them and the
 * ways on. A negative code (msg says it) when ROOT cannot be read or a
 * move fails. msg has no command prefix. */
int bt_ckpt_resume_settle(const char *root, const bt_ckpt_step_t *from, const char *path, int move_aside,
                          char *msg, size_t msglen);

/* ---- shards (for the inspection tool) ---- */

typedef struct bt_ckpt_shard bt_ckpt_shard_t;

/* BT_ENOTCKPT: not HDF5 or not a baton shard; BT_EVERSION: another format
 * version; BT_ECORRUPT: an HDF5 file that cannot be opened or read. */
int bt_ckpt_shard_open(const char *path, bt_ckpt_shard_t **out);
void bt_ckpt_shard_close(bt_ckpt_shard_t *s);
const bt_ckpt_meta_t *bt_ckpt_shard_meta(const bt_ckpt_shard_t *s);
/* The global layers the shard's root attribute says it holds. */
const uint32_t *bt_ckpt_shard_layers(const bt_ckpt_shard_t *s, size_t *n);
/* Every dataset, sorted by (layer, kind, index); data NULL. */
int bt_ckpt_shard_list(bt_ckpt_shard_t *s, bt_ckpt_tensor_t **out, size_t *n);
/* Reads one dataset into t->data (numel floats) and checks its crc
 * attribute (BT_ECRC). *stored gets the bytes on disk when not NULL. */
int bt_ckpt_shard_read(bt_ckpt_shard_t *s, bt_ckpt_tensor_t *t, uint64_t *stored);

/* ---- retention ---- */

typedef struct {
  int keep_last;       /* newest committed steps kept; at least 1 (default 2) */
  int64_t keep_every;  /* also keep steps divisible by this; 0: none */
} bt_ckpt_retention_t;

/* Deletes committed steps outside the policy, never the newest step that
 * passes the cheap check nor `protect` (-1: none), and removes .tmp and
 * manifest-less step directories older than the newest commit (newer ones
 * may be in flight). *removed (may be NULL) gets the count. */
int bt_ckpt_retain(const char *root, const bt_ckpt_retention_t *pol, int64_t protect,
                   int *removed);

/* Removes every step directory without a manifest (step-S.tmp, torn
 * steps), whatever its step: only for a caller that holds the lock and
 * knows no writer is left (the job is over). *removed (may be NULL) gets
 * the count. */
int bt_ckpt_remove_debris(const char *root, int *removed);

/* ---- the LOCK file ---- */

typedef struct bt_ckpt_lock_s {
  int fd;          /* ROOT/LOCK, flocked, naming the holder */
  int dir_fd;      /* ROOT itself, flocked: deleting LOCK cannot release it */
  char path[4096];
} bt_ckpt_lock_t;

/* One job per checkpoint directory (made when missing). BT_ELOCKED when
 * another live process holds it, with "pid P on host H since T" in `holder`;
 * a lock left by a process that is gone is taken over (with a warning). */
int bt_ckpt_lock_acquire(const char *root, bt_ckpt_lock_t *lk, char *holder, size_t holderlen);
void bt_ckpt_lock_release(bt_ckpt_lock_t *lk);
/* Re-checks, by inode, that ROOT/LOCK is still the file we hold (called at
 * each commit). When it was deleted or replaced, the directory's flock
 * still keeps other jobs out; LOCK is written again (so a second job's
 * error names us) and 1 is returned, for a warning. 0 when unchanged,
 * -errno when it could not be rewritten. */
int bt_ckpt_lock_check(bt_ckpt_lock_t *lk);

#endif
