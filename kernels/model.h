/* model.h - the model's layers composed from backend ops, and chunks.
 *
 * A LAYER type is a vtable: its name, how much per-micro-batch memory it
 * keeps, forward, backward_input (I: the input gradient) and
 * backward_weight (W: += its parameter gradients). Its tensors, shapes and
 * declared order come from the description in common/model.h. A new layer
 * type (attention) adds a description there and a vtable here; nothing else
 * changes.
 *
 * A CHUNK is a contiguous range of global layers [first, last] (embed alone
 * and head alone included) that owns ONE parameter allocation, ONE gradient
 * allocation and ONE optimizer-state allocation (AdamW m then v), with
 * per-layer pointers into them; zeroing gradients, the AdamW step and a
 * checkpoint copy are each one call over one buffer. It also owns, for each
 * of its M micro-batches, every activation and gradient buffer its layers
 * use, so nothing is overwritten before the step ends: the buffers the
 * caller sends stay valid, and W may run long after I (zero-bubble
 * schedules).
 *
 * Determinism (DESIGN.md §8): a layer computes the same ops, with the same
 * shapes, on the same kinds of buffers whether its neighbours are in its
 * chunk or not: layer j reads its input from layer j-1's output buffer or,
 * at a chunk boundary, from the chunk's receive buffer, which the caller
 * filled with the same bits. Every parameter gradient is accumulated by its
 * own layer (W) over micro-batches in the order the caller runs them; the
 * caller runs them in increasing order. Nothing is batched across
 * micro-batches.
 *
 * Not here: data, the learning-rate schedule, several chunks, the step
 * (worker/stage.h).
 */
#ifndef BT_KERNELS_MODEL_H
#define BT_KERNELS_MODEL_H
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/model.h"
#include "kernels/backend.h"

typedef struct bt_layer bt_layer_t;

/* The buffers of one layer for one micro-batch (backend memory). */
typedef struct {
  const float *in;       /* (T, D) input activation; NULL for embed */
  float *out;            /* (T, D) output activation; NULL for head */
  const uint8_t *bytes;  /* (T + K + 1) micro-batch bytes: embed context, head targets */
  const float *dout;     /* (T, D) gradient of the output; NULL for head */
  float *din;            /* (T, D) gradient of the input, written by I; NULL for embed */
  float *stash;          /* the layer's own per-micro-batch memory */
  float loss_scale;      /* head: the loss gradient's constant 1/(M*T) */
} bt_layer_io_t;

typedef struct bt_layer_ops {
  const char *type_name;
  /* Floats of per-micro-batch memory in io.stash. */
  uint64_t (*stash_floats)(const bt_layer_t *l);
  int (*forward)(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io);
  /* Overwrites io.din (when the layer has an input). */
  int (*backward_input)(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io);
  /* Accumulates (+=) into the layer's gradients; after backward_input. */
  int (*backward_weight)(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io);
  /* Head only: the (T) per-token losses forward left in stash; else NULL. */
  const float *(*losses)(const bt_layer_t *l, const float *stash);
} bt_layer_ops_t;

struct bt_layer {
  const bt_layer_ops_t *ops;
  bt_layer_desc_t desc;               /* index, type, tensors */
  int T, D, K;
  float *p[BT_LAYER_TENSORS_MAX];     /* parameters, declared order */
  float *g[BT_LAYER_TENSORS_MAX];     /* their gradients */
  float *m[BT_LAYER_TENSORS_MAX];     /* AdamW first moments */
  float *v[BT_LAYER_TENSORS_MAX];     /* AdamW second moments */
  size_t offset;                      /* of p[0] in the chunk's parameter buffer */
};

const bt_layer_ops_t *bt_layer_ops(bt_layer_type_t type);

typedef struct bt_chunk {
  bt_backend_t *be;
  bt_model_config_t model;
  int first, last;          /* global layers, inclusive */
  int nlayers, nmb;
  bt_layer_t *layers;       /* nlayers */
  size_t nparams;
  float *params;            /* (nparams) */
  float *grads;             /* (nparams) */
  float *opt;               /* (2 nparams): m then v */
  float *act;               /* all per-micro-batch buffers, one allocation */
  size_t act_floats;        /* its size (bt_model_activation_floats less data bytes, x nmb) */
  uint8_t *bytes;           /* (nmb, T + K + 1) micro-batch bytes, when needed */
  size_t nbytes;            /* T + K + 1 */
  /* [layer * nmb + mb]: output (non-head), input gradient (non-embed), stash */
  float **out, **din, **stash;
  float **recv_act;         /* [mb] (T, D), when first > 0 */
  float **recv_grad;        /* [mb] (T, D), when last < L + 1 */
} bt_chunk_t;

/* The scratch floats any backend's ops need for this model's largest
 * shapes (the embedding's weight gradient, K·256·D plus marks; a block's
 * 4·D² product; the head's 256·D), for bt_backend_ops_t.seal. */
size_t bt_model_scratch_floats(const bt_model_config_t *m);

/* Allocates a chunk of layers first..last for nmb micro-batches; parameters
 * are set to their initial values (a pure function of seed, layer, tensor,
 * element), gradients and AdamW state to zero. */
int bt_chunk_create(bt_backend_t *be, const bt_model_config_t *m, int first, int last, int nmb,
                    bt_chunk_t **out);
void bt_chunk_destroy(bt_chunk_t *c);

int bt_chunk_zero_grads(bt_chunk_t *c);
/* Forward of micro-batch mb through every layer of the chunk. The caller
 * filled bt_chunk_bytes (when the chunk holds embed or head) and
 * bt_chunk_act_in (when it does not start with embed). */
int bt_chunk_forward(bt_chunk_t *c, int mb);
/* I then W, each over the chunk's layers from last to first. The caller
 * filled bt_chunk_grad_in unless the chunk holds the head. */
int bt_chunk_backward_input(bt_chunk_t *c, int mb, float loss_scale);
int bt_chunk_backward_weight(bt_chunk_t *c, int mb);
/* One AdamW call over the chunk's whole parameter buffer. */
int bt_chunk_adamw(bt_chunk_t *c, float lr, float bias_correction1, float bias_correction2);

/* Buffers for the caller (backend memory, NULL where the chunk has none). */
float *bt_chunk_act_in(bt_chunk_t *c, int mb);    /* receive: input activation */
float *bt_chunk_act_out(bt_chunk_t *c, int mb);   /* send: output activation */
float *bt_chunk_grad_in(bt_chunk_t *c, int mb);   /* receive: gradient of the output */
float *bt_chunk_grad_out(bt_chunk_t *c, int mb);  /* send: gradient of the input */
uint8_t *bt_chunk_bytes(bt_chunk_t *c, int mb);   /* (T + K + 1) data bytes */
const float *bt_chunk_losses(bt_chunk_t *c, int mb); /* (T) token losses, head only */

#endif
