/* stage.h - one pipeline stage: the code a worker runs, action by action,
 * and that `baton train` runs as a single stage holding one chunk with all
 * L+2 layers (DESIGN.md §1, §4, §8).
 *
 * A stage owns one or more chunks (virtual stages; a worker with v chunks
 * holds virtual stages k = c*p + s), their parameters, gradients, AdamW
 * state and per-micro-batch buffers, and reads its own data: the chunk
 * holding embed computes its input bytes, the chunk holding head its
 * targets, both as a pure function of (seed, step, micro-batch).
 *
 * The API is the schedule's actions. A step is:
 *   bt_stage_begin_step(st, step)           zeroes every gradient
 *   for each action in schedule order:
 *     F: [caller fills bt_stage_act_in]   bt_stage_forward(st, c, mb)
 *                                         [caller sends bt_stage_act_out]
 *     I: [caller fills bt_stage_grad_in]  bt_stage_backward_input(st, c, mb)
 *                                         [caller sends bt_stage_grad_out]
 *     W:                                  bt_stage_backward_weight(st, c, mb)
 *     B:                                  bt_stage_backward(st, c, mb) = I then W
 *   bt_stage_optimizer_step(st)
 *   bt_stage_loss(st, &loss)                on the stage holding the head
 * Buffers handed out for sending or receiving are the backend's memory (a
 * GPU pointer on CUDA), one per (chunk, micro-batch), and nothing touches
 * them until the step ends. Order is checked, BT_ESCHEDULE otherwise: F
 * once per (chunk, mb), I after its F, W after its I and, on each chunk,
 * in increasing micro-batch order (DESIGN.md §4, §8), and the optimizer
 * step only after every W.
 *
 * Not here: communication, schedules, checkpoint files, the control
 * channel. The checkpoint code reads and writes tensors through the
 * enumeration below, by global layer index only.
 */
#ifndef BT_WORKER_STAGE_H
#define BT_WORKER_STAGE_H
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/data.h"
#include "common/hash.h"
#include "kernels/backend.h"
#include "kernels/model.h"

typedef struct bt_stage bt_stage_t;

typedef struct {
  int first, last; /* global layers, inclusive */
} bt_layer_range_t;

/* Chunks in the order given (chunk c is the stage's c-th virtual stage).
 * Sets the backend's math mode to m->math. Opens the data source when a
 * chunk holds embed or head; a bad data file is BT_EARG with a one-line
 * reason in err. */
int bt_stage_create(bt_backend_t *be, const bt_model_config_t *m, const bt_layer_range_t *chunks,
                    int nchunks, bt_stage_t **out, char *err, size_t errlen);
void bt_stage_destroy(bt_stage_t *st);
/* Ends set-up on the stage's backend (bt_backend_ops_t.seal): the scratch
 * is sized for this model and nothing is allocated any more, so no step
 * ever allocates or frees device memory. Call once every stage of the
 * backend exists; 0 or a negative code. */
int bt_stage_seal(bt_stage_t *st);

int bt_stage_nchunks(const bt_stage_t *st);
/* The stage's data source (entropies for reports); NULL when no chunk holds
 * embed or head. */
const bt_data_t *bt_stage_data(const bt_stage_t *st);
bt_chunk_t *bt_stage_chunk(bt_stage_t *st, int chunk);

/* Starts step `step` (0-based: the state after `step` updates is current).
 * BT_EARG unless step equals the optimizer step counter. */
int bt_stage_begin_step(bt_stage_t *st, int64_t step);
int bt_stage_forward(bt_stage_t *st, int chunk, int mb);
int bt_stage_backward_input(bt_stage_t *st, int chunk, int mb);
int bt_stage_backward_weight(bt_stage_t *st, int chunk, int mb);
int bt_stage_backward(bt_stage_t *st, int chunk, int mb);
/* AdamW on every chunk (one call per chunk), then counter + 1. */
int bt_stage_optimizer_step(bt_stage_t *st);
/* The step's loss: mean over the M*T tokens, summed in double, tokens in
 * order within a micro-batch, micro-batches in increasing order. BT_EARG on
 * a stage without the head or before every micro-batch went forward. */
int bt_stage_loss(const bt_stage_t *st, double *loss);

/* Learning rate of 0-based update `step`: linear warm-up over `warmup`
 * steps, cosine decay to lr/10 at lr_decay_steps, lr/10 after it. */
double bt_stage_lr(const bt_model_config_t *m, int64_t step);

/* Buffers of (chunk, mb), (T, D) floats each, backend memory; NULL where
 * the chunk has none (act_in when it holds embed, grad_in/act_out when it
 * holds head, grad_out when it holds embed). */
float *bt_stage_act_in(bt_stage_t *st, int chunk, int mb);
float *bt_stage_act_out(bt_stage_t *st, int chunk, int mb);
float *bt_stage_grad_in(bt_stage_t *st, int chunk, int mb);
float *bt_stage_grad_out(bt_stage_t *st, int chunk, int mb);
size_t bt_stage_act_bytes(const bt_stage_t *st);

/* ---- tensors, for checkpoints and hashes ---- */

typedef enum { BT_TENSOR_PARAM = 0, BT_TENSOR_ADAM_M = 1, BT_TENSOR_ADAM_V = 2 } bt_tensor_kind_t;

typedef struct {
  int layer;               /* global layer index */
  int index;               /* position in the layer type's declared order */
  const char *name;        /* "w1" */
  const char *layer_type;  /* "block" */
  int kind;                /* bt_tensor_kind_t */
  int ndim;
  int64_t shape[3];
  size_t count;
  int chunk;               /* which of this stage's chunks holds it */
  size_t offset;           /* floats into that chunk's buffer of this kind */
  float *data;             /* backend memory */
} bt_stage_tensor_t;

/* Every tensor: parameters of all layers (global layer order, declared
 * order), then AdamW m in the same order, then v. */
size_t bt_stage_tensor_count(const bt_stage_t *st);
int bt_stage_tensor(const bt_stage_t *st, size_t i, bt_stage_tensor_t *out);
/* Copies tensor i to / from host memory (count floats). */
int bt_stage_tensor_get(bt_stage_t *st, size_t i, float *host);
int bt_stage_tensor_set(bt_stage_t *st, size_t i, const float *host);
/* The optimizer step counter (updates done); a restore sets it. */
int64_t bt_stage_opt_step(const bt_stage_t *st);
void bt_stage_set_opt_step(bt_stage_t *st, int64_t t);

/* One hash record per parameter tensor of this stage (common/hash.h); the
 * combiner sorts. cap is the room in recs; *n gets the count. */
size_t bt_stage_param_tensor_count(const bt_stage_t *st);
int bt_stage_hash_records(bt_stage_t *st, bt_hash_rec_t *recs, size_t cap, size_t *n);
/* NaN and Inf among the parameters (the commit guard). */
int bt_stage_count_nonfinite(bt_stage_t *st, size_t *count);

#endif
