/* stage_ckpt.h - one stage's checkpoint: describe its tensors for the
 * checkpoint module, save them (through the asynchronous writer), restore
 * them from a committed step (any split: loading reshards), and hash them.
 *
 * Shared by the pipeline worker (worker/pipeline.c) and `baton train`
 * (worker/cmd_train.c), which is the same code run as one stage: the two
 * used to carry their own copies and must not drift, since `train` is the
 * reference every pipeline run matches bit for bit.
 *
 * Not here: when to save (the callers' cadence and CKPT_AT), committing
 * (checkpoint/commit.c), choosing the step to restore (checkpoint/lineage.c,
 * launcher/recovery.c).
 */
#ifndef BT_WORKER_STAGE_CKPT_H
#define BT_WORKER_STAGE_CKPT_H
#include <stddef.h>
#include <stdint.h>

#include "checkpoint/ckpt.h"
#include "common/config.h"
#include "common/hash.h"
#include "worker/stage.h"

typedef struct {
  bt_ckpt_tensor_t *desc;   /* every tensor of the stage, data NULL */
  size_t n;
  char *model_text;         /* canonical texts stored in every shard */
  char *run_text;
  uint32_t stage, stages, chunks;
  uint32_t layer_count;
  uint64_t seed;
} bt_stage_ckpt_t;

/* Describes the tensors of `st` (one of `stages`, holding `chunks` chunks)
 * and keeps cfg's texts. 0 or a negative code; free with _free either way. */
int bt_stage_ckpt_init(bt_stage_ckpt_t *c, bt_stage_t *st, const bt_config_t *cfg, uint32_t stage,
                       uint32_t stages, uint32_t chunks);
void bt_stage_ckpt_free(bt_stage_ckpt_t *c);

/* Loads every tensor of the stage from the open committed step `src`, the
 * AdamW state and the step counter (which must equal the step: BT_ECORRUPT
 * otherwise, a shard not written by this code). BT_ECONFIG when a tensor is
 * missing or of another shape (another model). */
int bt_stage_ckpt_load(const bt_stage_ckpt_t *c, bt_stage_t *st, const bt_ckpt_step_t *src);

/* Queues the shard of the state after `step` updates on writer `w`:
 * training waits for the snapshot copy only (fill, e.g. straight from
 * device memory; NULL: bt_stage_tensor_get). Non-finite parameters are
 * refused with BT_ENONFINITE and *nonfinite (may be NULL) gets their count;
 * nothing is queued then. */
int bt_stage_ckpt_save(const bt_stage_ckpt_t *c, bt_stage_t *st, bt_ckpt_writer_t *w, int64_t step,
                       bt_ckpt_fill_fn fill, void *arg, int64_t timeout_ms, size_t *nonfinite);

/* The hash records of the stage's parameters (DESIGN.md §8), malloc'ed. */
int bt_stage_ckpt_hash(bt_stage_t *st, bt_hash_rec_t **recs, size_t *n);

#endif
