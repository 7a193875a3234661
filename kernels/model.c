/* model.c - see model.h. The three layer types, then chunks. */
#include "kernels/model.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define TRY(call)              \
  do {                         \
    int rc_ = (call);          \
    if (rc_ < 0) return rc_;   \
  } while (0)

#define OPS(be) ((be)->ops)

/* ---- embed: out[t] = sum_k tables[k][ctx[t + K - 1 - k]] ---- */

static uint64_t embed_stash(const bt_layer_t *l) { return 0; }

static int embed_forward(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  return OPS(be)->embed_forward(be, io->out, l->p[0], io->bytes, l->T, l->K, l->D);
}

/* The embedding has no input gradient: the bytes are not differentiable. */
static int embed_backward_input(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  return 0;
}

static int embed_backward_weight(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  return OPS(be)->embed_backward_weight(be, l->g[0], io->dout, io->bytes, l->T, l->K, l->D);
}

/* ---- block: y = x + W2 gelu(W1 layernorm(x) + b1) + b2 ----
 * stash: ln (T,D) | mean (T) | rstd (T) | h (T,4D) | g (T,4D) | dh (T,4D) | dln (T,D) */

enum { B_LNW, B_LNB, B_W1, B_B1, B_W2, B_B2 };

typedef struct {
  float *ln, *mean, *rstd, *h, *g, *dh, *dln;
} block_stash_t;

static block_stash_t block_parts(const bt_layer_t *l, float *s) {
  size_t T = (size_t)l->T, D = (size_t)l->D;
  block_stash_t b;
  b.ln = s;
  b.mean = b.ln + T * D;
  b.rstd = b.mean + T;
  b.h = b.rstd + T;
  b.g = b.h + 4 * T * D;
  b.dh = b.g + 4 * T * D;
  b.dln = b.dh + 4 * T * D;
  return b;
}

static uint64_t block_stash(const bt_layer_t *l) {
  uint64_t T = (uint64_t)l->T, D = (uint64_t)l->D;
  return 14 * T * D + 2 * T;
}

static int block_forward(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  const bt_backend_ops_t *o = OPS(be);
  int T = l->T, D = l->D;
  size_t n = (size_t)T * D;
  block_stash_t s = block_parts(l, io->stash);
  TRY(o->layernorm_forward(be, s.ln, s.mean, s.rstd, io->in, l->p[B_LNW], l->p[B_LNB], T, D));
  TRY(o->matmul_forward(be, s.h, s.ln, l->p[B_W1], l->p[B_B1], T, D, 4 * D));
  TRY(o->gelu_forward(be, s.g, s.h, 4 * n));
  TRY(o->matmul_forward(be, io->out, s.g, l->p[B_W2], l->p[B_B2], T, 4 * D, D));
  return o->residual_forward(be, io->out, io->in, io->out, n);
}

static int block_backward_input(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  const bt_backend_ops_t *o = OPS(be);
  int T = l->T, D = l->D;
  size_t n = (size_t)T * D;
  block_stash_t s = block_parts(l, io->stash);
  /* dh first holds d(gelu output), then, in place, d(pre-GELU hidden). */
  TRY(o->matmul_backward_input(be, s.dh, io->dout, l->p[B_W2], T, 4 * D, D));
  TRY(o->gelu_backward(be, s.dh, s.h, s.dh, 4 * n));
  TRY(o->matmul_backward_input(be, s.dln, s.dh, l->p[B_W1], T, D, 4 * D));
  TRY(o->layernorm_backward_input(be, io->din, s.dln, io->in, l->p[B_LNW], s.mean, s.rstd, T, D));
  /* The residual path: its gradient is dout itself. */
  return o->accumulate(be, io->din, io->dout, n);
}

static int block_backward_weight(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  const bt_backend_ops_t *o = OPS(be);
  int T = l->T, D = l->D;
  block_stash_t s = block_parts(l, io->stash);
  TRY(o->matmul_backward_weight(be, l->g[B_W2], l->g[B_B2], io->dout, s.g, T, 4 * D, D));
  TRY(o->matmul_backward_weight(be, l->g[B_W1], l->g[B_B1], s.dh, s.ln, T, D, 4 * D));
  return o->layernorm_backward_weight(be, l->g[B_LNW], l->g[B_LNB], s.dln, io->in, s.mean,
                                      s.rstd, T, D);
}

/* ---- head: layernorm, logits = Wout x, softmax cross-entropy ----
 * stash: ln (T,D) | dln (T,D) | mean (T) | rstd (T) | logits, then their
 * gradient (T,256) | probs (T,256) | losses (T) */

enum { H_LNW, H_LNB, H_WOUT };

typedef struct {
  float *ln, *dln, *mean, *rstd, *logits, *probs, *losses;
} head_stash_t;

static head_stash_t head_parts(const bt_layer_t *l, float *s) {
  size_t T = (size_t)l->T, D = (size_t)l->D;
  head_stash_t h;
  h.ln = s;
  h.dln = h.ln + T * D;
  h.mean = h.dln + T * D;
  h.rstd = h.mean + T;
  h.logits = h.rstd + T;
  h.probs = h.logits + T * BT_MODEL_VOCAB;
  h.losses = h.probs + T * BT_MODEL_VOCAB;
  return h;
}

static uint64_t head_stash(const bt_layer_t *l) {
  uint64_t T = (uint64_t)l->T, D = (uint64_t)l->D;
  return 2 * T * D + 2 * T * BT_MODEL_VOCAB + 3 * T;
}

static int head_forward(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  const bt_backend_ops_t *o = OPS(be);
  int T = l->T, D = l->D, V = BT_MODEL_VOCAB;
  head_stash_t s = head_parts(l, io->stash);
  TRY(o->layernorm_forward(be, s.ln, s.mean, s.rstd, io->in, l->p[H_LNW], l->p[H_LNB], T, D));
  TRY(o->matmul_forward(be, s.logits, s.ln, l->p[H_WOUT], NULL, T, D, V));
  return o->crossentropy_forward(be, s.losses, s.probs, s.logits, io->bytes + l->K, T, V);
}

static int head_backward_input(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  const bt_backend_ops_t *o = OPS(be);
  int T = l->T, D = l->D, V = BT_MODEL_VOCAB;
  head_stash_t s = head_parts(l, io->stash);
  /* The logits are not needed after forward: their buffer takes dlogits. */
  TRY(o->crossentropy_backward(be, s.logits, s.probs, io->bytes + l->K, io->loss_scale, T, V));
  TRY(o->matmul_backward_input(be, s.dln, s.logits, l->p[H_WOUT], T, D, V));
  return o->layernorm_backward_input(be, io->din, s.dln, io->in, l->p[H_LNW], s.mean, s.rstd, T,
                                     D);
}

static int head_backward_weight(bt_backend_t *be, const bt_layer_t *l, const bt_layer_io_t *io) {
  const bt_backend_ops_t *o = OPS(be);
  int T = l->T, D = l->D, V = BT_MODEL_VOCAB;
  head_stash_t s = head_parts(l, io->stash);
  TRY(o->matmul_backward_weight(be, l->g[H_WOUT], NULL, s.logits, s.ln, T, D, V));
  return o->layernorm_backward_weight(be, l->g[H_LNW], l->g[H_LNB], s.dln, io->in, s.mean, s.rstd,
                                      T, D);
}

static const float *head_losses(const bt_layer_t *l, const float *stash) {
  return head_parts(l, (float *)stash).losses;
}

static const bt_layer_ops_t g_ops[] = {
    [BT_LAYER_EMBED] = {"embed", embed_stash, embed_forward, embed_backward_input,
                        embed_backward_weight, NULL},
    [BT_LAYER_BLOCK] = {"block", block_stash, block_forward, block_backward_input,
                        block_backward_weight, NULL},
    [BT_LAYER_HEAD] = {"head", head_stash, head_forward, head_backward_input, head_backward_weight,
                       head_losses},
};

const bt_layer_ops_t *bt_layer_ops(bt_layer_type_t type) {
  if ((int)type < 0 || (size_t)type >= sizeof g_ops / sizeof g_ops[0]) return NULL;
  return &g_ops[type];
}

/* ---- chunks ---- */

static int is_head(const bt_chunk_t *c, int layer) { return layer == c->model.layers + 1; }

/* Sets every parameter to its initial value, one tensor at a time through a
 * host buffer (the backend may be a GPU). */
static int init_params(bt_chunk_t *c) {
  size_t biggest = 0;
  for (int i = 0; i < c->nlayers; i++)
    for (int t = 0; t < c->layers[i].desc.ntensors; t++)
      if (c->layers[i].desc.tensors[t].count > biggest) biggest = c->layers[i].desc.tensors[t].count;
  float *host = malloc((biggest ? biggest : 1) * sizeof(float));
  if (!host) return -ENOMEM;
  int rc = 0;
  for (int i = 0; i < c->nlayers && !rc; i++) {
    bt_layer_t *l = &c->layers[i];
    for (int t = 0; t < l->desc.ntensors && !rc; t++) {
      const bt_tensor_desc_t *d = &l->desc.tensors[t];
      bt_model_init_tensor(&c->model, l->desc.index, t, d, host);
      rc = c->be->ops->to_device(c->be, l->p[t], host, d->count * sizeof(float));
    }
  }
  free(host);
  return rc;
}

/* Carves the per-micro-batch buffers out of one allocation, in the order
 * bt_model_activation_floats counts them. */
static int alloc_activations(bt_chunk_t *c) {
  const bt_model_config_t *m = &c->model;
  size_t T = (size_t)m->mb_tokens, D = (size_t)m->dim, TD = T * D;
  size_t per_mb = 0;
  for (int i = 0; i < c->nlayers; i++) {
    const bt_layer_t *l = &c->layers[i];
    if (!is_head(c, l->desc.index)) per_mb += TD;
    if (l->desc.index > 0) per_mb += TD;
    per_mb += (size_t)l->ops->stash_floats(l);
  }
  if (c->first > 0) per_mb += TD;
  if (!is_head(c, c->last)) per_mb += TD;
  size_t total = per_mb * (size_t)c->nmb;
  c->act_floats = total;
  int rc = c->be->ops->alloc(c->be, (void **)&c->act, (total ? total : 1) * sizeof(float));
  if (rc) return rc;
  size_t n = (size_t)c->nlayers * (size_t)c->nmb;
  c->out = calloc(n, sizeof(float *));
  c->din = calloc(n, sizeof(float *));
  c->stash = calloc(n, sizeof(float *));
  c->recv_act = calloc((size_t)c->nmb, sizeof(float *));
  c->recv_grad = calloc((size_t)c->nmb, sizeof(float *));
  if (!c->out || !c->din || !c->stash || !c->recv_act || !c->recv_grad) return -ENOMEM;
  float *p = c->act;
  for (int mb = 0; mb < c->nmb; mb++) {
    for (int i = 0; i < c->nlayers; i++) {
      const bt_layer_t *l = &c->layers[i];
      size_t k = (size_t)i * (size_t)c->nmb + (size_t)mb;
      if (!is_head(c, l->desc.index)) {
        c->out[k] = p;
        p += TD;
      }
      if (l->desc.index > 0) {
        c->din[k] = p;
        p += TD;
      }
      c->stash[k] = p;
      p += l->ops->stash_floats(l);
    }
    if (c->first > 0) {
      c->recv_act[mb] = p;
      p += TD;
    }
    if (!is_head(c, c->last)) {
      c->recv_grad[mb] = p;
      p += TD;
    }
  }
  return 0;
}

void bt_chunk_destroy(bt_chunk_t *c) {
  if (!c) return;
  bt_backend_t *be = c->be;
  if (be) {
    if (c->bytes) be->ops->free(be, c->bytes);
    if (c->act) be->ops->free(be, c->act);
    if (c->opt) be->ops->free(be, c->opt);
    if (c->grads) be->ops->free(be, c->grads);
    if (c->params) be->ops->free(be, c->params);
  }
  free(c->recv_grad);
  free(c->recv_act);
  free(c->stash);
  free(c->din);
  free(c->out);
  free(c->layers);
  free(c);
}

int bt_chunk_create(bt_backend_t *be, const bt_model_config_t *m, int first, int last, int nmb,
                    bt_chunk_t **out) {
  *out = NULL;
  if (first < 0 || last < first || last > m->layers + 1 || nmb < 1) return BT_EARG;
  int rc = 0;
  bt_chunk_t *c = calloc(1, sizeof *c);
  if (!c) return -ENOMEM;
  c->be = be;
  c->model = *m;
  c->first = first;
  c->last = last;
  c->nlayers = last - first + 1;
  c->nmb = nmb;
  c->layers = calloc((size_t)c->nlayers, sizeof *c->layers);
  if (!c->layers) {
    rc = -ENOMEM;
    goto fail;
  }
  for (int i = 0; i < c->nlayers; i++) {
    bt_layer_t *l = &c->layers[i];
    rc = bt_model_layer(m, first + i, &l->desc);
    if (rc) goto fail;
    l->ops = bt_layer_ops(l->desc.type);
    l->T = m->mb_tokens;
    l->D = m->dim;
    l->K = m->context;
    l->offset = c->nparams;
    c->nparams += l->desc.params;
  }
  size_t bytes = c->nparams * sizeof(float);
  if ((rc = be->ops->alloc(be, (void **)&c->params, bytes)) ||
      (rc = be->ops->alloc(be, (void **)&c->grads, bytes)) ||
      (rc = be->ops->alloc(be, (void **)&c->opt, 2 * bytes)))
    goto fail;
  for (int i = 0; i < c->nlayers; i++) {
    bt_layer_t *l = &c->layers[i];
    size_t off = l->offset;
    for (int t = 0; t < l->desc.ntensors; t++) {
      l->p[t] = c->params + off;
      l->g[t] = c->grads + off;
      l->m[t] = c->opt + off;
      l->v[t] = c->opt + c->nparams + off;
      off += l->desc.tensors[t].count;
    }
  }
  if ((rc = alloc_activations(c))) goto fail;
  c->nbytes = (size_t)m->context + (size_t)m->mb_tokens + 1;
  if (first == 0 || is_head(c, last)) {
    rc = be->ops->alloc(be, (void **)&c->bytes, c->nbytes * (size_t)nmb);
    if (rc) goto fail;
  }
  if ((rc = init_params(c))) goto fail;
  *out = c;
  return 0;
fail:
  bt_chunk_destroy(c);
  return rc;
}

int bt_chunk_zero_grads(bt_chunk_t *c) {
  return c->be->ops->zero(c->be, c->grads, c->nparams * sizeof(float));
}

/* The buffers of layer i (chunk-local) for micro-batch mb. */
static bt_layer_io_t layer_io(bt_chunk_t *c, int i, int mb, float loss_scale) {
  size_t k = (size_t)i * (size_t)c->nmb + (size_t)mb;
  int layer = c->first + i;
  bt_layer_io_t io = {0};
  if (layer > 0)
    io.in = i == 0 ? c->recv_act[mb] : c->out[k - (size_t)c->nmb];
  io.out = c->out[k];
  io.din = c->din[k];
  if (!is_head(c, layer))
    io.dout = layer == c->last ? c->recv_grad[mb] : c->din[k + (size_t)c->nmb];
  io.bytes = c->bytes ? c->bytes + c->nbytes * (size_t)mb : NULL;
  io.stash = c->stash[k];
  io.loss_scale = loss_scale;
  return io;
}

int bt_chunk_forward(bt_chunk_t *c, int mb) {
  if (mb < 0 || mb >= c->nmb) return BT_EARG;
  for (int i = 0; i < c->nlayers; i++) {
    bt_layer_io_t io = layer_io(c, i, mb, 0.0f);
    TRY(c->layers[i].ops->forward(c->be, &c->layers[i], &io));
  }
  return 0;
}

int bt_chunk_backward_input(bt_chunk_t *c, int mb, float loss_scale) {
  if (mb < 0 || mb >= c->nmb) return BT_EARG;
  for (int i = c->nlayers - 1; i >= 0; i--) {
    bt_layer_io_t io = layer_io(c, i, mb, loss_scale);
    TRY(c->layers[i].ops->backward_input(c->be, &c->layers[i], &io));
  }
  return 0;
}

int bt_chunk_backward_weight(bt_chunk_t *c, int mb) {
  if (mb < 0 || mb >= c->nmb) return BT_EARG;
  for (int i = c->nlayers - 1; i >= 0; i--) {
    bt_layer_io_t io = layer_io(c, i, mb, 0.0f);
    TRY(c->layers[i].ops->backward_weight(c->be, &c->layers[i], &io));
  }
  return 0;
}

int bt_chunk_adamw(bt_chunk_t *c, float lr, float bias_correction1, float bias_correction2) {
  const bt_model_config_t *m = &c->model;
  return c->be->ops->adamw_update(c->be, c->params, c->opt, c->opt + c->nparams, c->grads,
                                  c->nparams, lr, (float)m->beta1, (float)m->beta2,
                                  (float)m->eps, (float)m->weight_decay, bias_correction1,
                                  bias_correction2);
}

float *bt_chunk_act_in(bt_chunk_t *c, int mb) {
  return mb >= 0 && mb < c->nmb ? c->recv_act[mb] : NULL;
}

float *bt_chunk_act_out(bt_chunk_t *c, int mb) {
  if (mb < 0 || mb >= c->nmb) return NULL;
  return c->out[(size_t)(c->nlayers - 1) * (size_t)c->nmb + (size_t)mb];
}

float *bt_chunk_grad_in(bt_chunk_t *c, int mb) {
  return mb >= 0 && mb < c->nmb ? c->recv_grad[mb] : NULL;
}

float *bt_chunk_grad_out(bt_chunk_t *c, int mb) {
  return mb >= 0 && mb < c->nmb ? c->din[mb] : NULL;
}

uint8_t *bt_chunk_bytes(bt_chunk_t *c, int mb) {
  if (!c->bytes || mb < 0 || mb >= c->nmb) return NULL;
  return c->bytes + c->nbytes * (size_t)mb;
}

const float *bt_chunk_losses(bt_chunk_t *c, int mb) {
  const bt_layer_t *l = &c->layers[c->nlayers - 1];
  if (!l->ops->losses || mb < 0 || mb >= c->nmb) return NULL;
  return l->ops->losses(l, c->stash[(size_t)(c->nlayers - 1) * (size_t)c->nmb + (size_t)mb]);
}

/* An upper bound over both backends: the CPU's embedding sums K·256·D
 * floats plus one mark byte per table row; a weight-gradient product needs
 * at most OC·C + OC (the CPU's band plus the CUDA backend's whole product);
 * layernorm's 2·C is smaller than either. */
size_t bt_model_scratch_floats(const bt_model_config_t *m) {
  size_t D = (size_t)m->dim, K = (size_t)(m->context > 0 ? m->context : 1), V = 256;
  size_t embed = K * V * D + K * V / sizeof(float) + 1;
  size_t block = 4 * D * D + 4 * D;
  size_t head = V * D + V;
  size_t n = embed > block ? embed : block;
  return n > head ? n : head;
}
