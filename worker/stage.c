/* stage.c - see stage.h. */
#include "worker/stage.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/data.h"
#include "common/error.h"

typedef struct {
  int chunk, layer_local, tensor;
} tensor_ref_t;

struct bt_stage {
  bt_backend_t *be;
  bt_model_config_t model;
  int nchunks;
  bt_chunk_t **chunks;
  bt_data_t *data;          /* NULL when no chunk holds embed or head */
  uint8_t *host_bytes;      /* one micro-batch of data, host side */
  float *host_losses;       /* (T) */
  int64_t step;             /* current step, -1 before begin_step */
  int64_t opt_step;         /* updates done */
  int head_chunk;           /* -1 when the stage has no head */
  double *mb_loss;          /* (M) summed token losses */
  unsigned char *mb_done;   /* (M) */
  size_t nparam_tensors;
  tensor_ref_t *refs;       /* nparam_tensors, global layer order */
  /* Per (chunk, mb) progress this step: DONE_F, DONE_I bits; and per chunk
   * the next micro-batch whose W may run (W in increasing order, §8). */
  unsigned char *done;      /* [chunk * M + mb] */
  int *next_w;              /* [chunk] */
};

enum { DONE_F = 1, DONE_I = 2 };

int bt_stage_create(bt_backend_t *be, const bt_model_config_t *m, const bt_layer_range_t *ranges,
                    int nchunks, bt_stage_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (nchunks < 1) return BT_EARG;
  int rc = 0;
  bt_stage_t *st = calloc(1, sizeof *st);
  if (!st) return -ENOMEM;
  st->be = be;
  st->model = *m;
  st->step = -1;
  st->head_chunk = -1;
  st->nchunks = nchunks;
  int M = m->microbatches;
  /* The math mode is part of the model configuration (§8): a backend left
   * in another mode would give other bits. */
  if (be->ops->set_math && (rc = be->ops->set_math(be, m->math))) {
    const char *env = getenv("BATON_CUDA_MATH");
    if (err && errlen && rc == BT_ECONFIG)
      snprintf(err, errlen, "--math %s conflicts with BATON_CUDA_MATH=%s: give one of them",
               m->math, env ? env : "");
    else if (err && errlen)
      snprintf(err, errlen, "--math %s: %s", m->math, bt_strerror(rc));
    goto fail;
  }
  st->chunks = calloc((size_t)nchunks, sizeof *st->chunks);
  st->mb_loss = calloc((size_t)M, sizeof *st->mb_loss);
  st->mb_done = calloc((size_t)M, 1);
  st->host_losses = malloc((size_t)m->mb_tokens * sizeof(float));
  st->done = calloc((size_t)nchunks * (size_t)M, 1);
  st->next_w = calloc((size_t)nchunks, sizeof *st->next_w);
  if (!st->chunks || !st->mb_loss || !st->mb_done || !st->host_losses || !st->done ||
      !st->next_w) {
    rc = -ENOMEM;
    goto fail;
  }
  int need_data = 0;
  for (int c = 0; c < nchunks; c++) {
    rc = bt_chunk_create(be, m, ranges[c].first, ranges[c].last, M, &st->chunks[c]);
    if (rc) goto fail;
    if (ranges[c].first == 0) need_data = 1;
    if (ranges[c].last == m->layers + 1) {
      need_data = 1;
      st->head_chunk = c;
    }
    for (int l = ranges[c].first; l <= ranges[c].last; l++) {
      bt_layer_desc_t d;
      bt_model_layer(m, l, &d);
      st->nparam_tensors += (size_t)d.ntensors;
    }
  }
  if (need_data) {
    rc = bt_data_open(m, &st->data, err, errlen);
    if (rc) goto fail;
    st->host_bytes = malloc(bt_data_batch_bytes(st->data));
    if (!st->host_bytes) {
      rc = -ENOMEM;
      goto fail;
    }
  }
  /* Tensor references in global layer order, whatever order the chunks
   * were given in. */
  st->refs = calloc(st->nparam_tensors ? st->nparam_tensors : 1, sizeof *st->refs);
  if (!st->refs) {
    rc = -ENOMEM;
    goto fail;
  }
  size_t k = 0;
  for (int layer = 0; layer <= m->layers + 1; layer++)
    for (int c = 0; c < nchunks; c++) {
      bt_chunk_t *ch = st->chunks[c];
      if (layer < ch->first || layer > ch->last) continue;
      const bt_layer_t *l = &ch->layers[layer - ch->first];
      for (int t = 0; t < l->desc.ntensors; t++)
        st->refs[k++] = (tensor_ref_t){c, layer - ch->first, t};
    }
  if (k != st->nparam_tensors) {
    /* Two chunks claimed the same layer. */
    rc = BT_EARG;
    goto fail;
  }
  *out = st;
  return 0;
fail:
  bt_stage_destroy(st);
  return rc;
}

int bt_stage_seal(bt_stage_t *st) {
  bt_backend_t *be = st->be;
  if (be->sealed) return 0;
  return be->ops->seal ? be->ops->seal(be, bt_model_scratch_floats(&st->model)) : 0;
}

void bt_stage_destroy(bt_stage_t *st) {
  if (!st) return;
  free(st->next_w);
  free(st->done);
  free(st->refs);
  bt_data_close(st->data);
  free(st->host_bytes);
  if (st->chunks)
    for (int c = 0; c < st->nchunks; c++) bt_chunk_destroy(st->chunks[c]);
  free(st->chunks);
  free(st->host_losses);
  free(st->mb_done);
  free(st->mb_loss);
  free(st);
}

int bt_stage_nchunks(const bt_stage_t *st) { return st->nchunks; }
const bt_data_t *bt_stage_data(const bt_stage_t *st) { return st->data; }

bt_chunk_t *bt_stage_chunk(bt_stage_t *st, int chunk) {
  return chunk >= 0 && chunk < st->nchunks ? st->chunks[chunk] : NULL;
}

static int check_action(const bt_stage_t *st, int chunk, int mb) {
  if (st->step < 0 || chunk < 0 || chunk >= st->nchunks || mb < 0 ||
      mb >= st->model.microbatches)
    return BT_EARG;
  return 0;
}

int bt_stage_begin_step(bt_stage_t *st, int64_t step) {
  if (step != st->opt_step) return BT_EARG;
  for (int c = 0; c < st->nchunks; c++) {
    int rc = bt_chunk_zero_grads(st->chunks[c]);
    if (rc) return rc;
  }
  memset(st->mb_loss, 0, (size_t)st->model.microbatches * sizeof *st->mb_loss);
  memset(st->mb_done, 0, (size_t)st->model.microbatches);
  memset(st->done, 0, (size_t)st->nchunks * (size_t)st->model.microbatches);
  memset(st->next_w, 0, (size_t)st->nchunks * sizeof *st->next_w);
  st->step = step;
  return 0;
}

static unsigned char *done_of(bt_stage_t *st, int chunk, int mb) {
  return &st->done[(size_t)chunk * (size_t)st->model.microbatches + (size_t)mb];
}

int bt_stage_forward(bt_stage_t *st, int chunk, int mb) {
  int rc = check_action(st, chunk, mb);
  if (rc) return rc;
  /* A second F of the same micro-batch would overwrite what its I and W
   * still read. */
  if (*done_of(st, chunk, mb)) return BT_ESCHEDULE;
  bt_chunk_t *c = st->chunks[chunk];
  uint8_t *dev_bytes = bt_chunk_bytes(c, mb);
  if (dev_bytes) {
    if ((rc = bt_data_batch(st->data, st->step, mb, st->host_bytes))) return rc;
    rc = st->be->ops->to_device(st->be, dev_bytes, st->host_bytes, bt_data_batch_bytes(st->data));
    if (rc) return rc;
  }
  if ((rc = bt_chunk_forward(c, mb))) return rc;
  if (chunk == st->head_chunk) {
    int T = st->model.mb_tokens;
    rc = st->be->ops->to_host(st->be, st->host_losses, bt_chunk_losses(c, mb),
                              (size_t)T * sizeof(float));
    if (rc) return rc;
    double s = 0;
    for (int t = 0; t < T; t++) s += st->host_losses[t];
    st->mb_loss[mb] = s;
    st->mb_done[mb] = 1;
  }
  *done_of(st, chunk, mb) = DONE_F;
  return 0;
}

int bt_stage_backward_input(bt_stage_t *st, int chunk, int mb) {
  int rc = check_action(st, chunk, mb);
  if (rc) return rc;
  if (*done_of(st, chunk, mb) != DONE_F) return BT_ESCHEDULE;
  /* The constant 1/(M*T): every micro-batch's share of the mean loss. */
  double scale = 1.0 / ((double)st->model.microbatches * (double)st->model.mb_tokens);
  rc = bt_chunk_backward_input(st->chunks[chunk], mb, (float)scale);
  if (!rc) *done_of(st, chunk, mb) |= DONE_I;
  return rc;
}

int bt_stage_backward_weight(bt_stage_t *st, int chunk, int mb) {
  int rc = check_action(st, chunk, mb);
  if (rc) return rc;
  /* Gradients are sums over micro-batches 0..M-1 in this order (§8 rule 2):
   * another order would round differently from `baton train`. */
  if (!(*done_of(st, chunk, mb) & DONE_I) || mb != st->next_w[chunk]) return BT_ESCHEDULE;
  rc = bt_chunk_backward_weight(st->chunks[chunk], mb);
  if (!rc) st->next_w[chunk]++;
  return rc;
}

int bt_stage_backward(bt_stage_t *st, int chunk, int mb) {
  int rc = bt_stage_backward_input(st, chunk, mb);
  if (rc) return rc;
  return bt_stage_backward_weight(st, chunk, mb);
}

double bt_stage_lr(const bt_model_config_t *m, int64_t step) {
  double peak = m->lr, floor = m->lr * 0.1;
  if (step < m->warmup) return peak * (double)(step + 1) / (double)m->warmup;
  if (step >= m->lr_decay_steps) return floor;
  double progress = (double)(step - m->warmup) / (double)(m->lr_decay_steps - m->warmup);
  return floor + (peak - floor) * 0.5 * (1.0 + cos(M_PI * progress));
}

int bt_stage_optimizer_step(bt_stage_t *st) {
  if (st->step != st->opt_step) return BT_EARG;
  /* Every micro-batch's W on every chunk, or the update misses gradient. */
  for (int c = 0; c < st->nchunks; c++)
    if (st->next_w[c] != st->model.microbatches) return BT_ESCHEDULE;
  const bt_model_config_t *m = &st->model;
  /* In double from the integer step, rounded once to float (§8 rule 5). */
  double t = (double)(st->opt_step + 1);
  float lr = (float)bt_stage_lr(m, st->opt_step);
  float bc1 = (float)(1.0 - pow(m->beta1, t));
  float bc2 = (float)(1.0 - pow(m->beta2, t));
  for (int c = 0; c < st->nchunks; c++) {
    int rc = bt_chunk_adamw(st->chunks[c], lr, bc1, bc2);
    if (rc) return rc;
  }
  st->opt_step++;
  st->step = -1;
  return 0;
}

int bt_stage_loss(const bt_stage_t *st, double *loss) {
  if (st->head_chunk < 0) return BT_EARG;
  int M = st->model.microbatches;
  double s = 0;
  for (int mb = 0; mb < M; mb++) {
    if (!st->mb_done[mb]) return BT_EARG;
    s += st->mb_loss[mb];
  }
  *loss = s / ((double)M * (double)st->model.mb_tokens);
  return 0;
}

float *bt_stage_act_in(bt_stage_t *st, int chunk, int mb) {
  return chunk >= 0 && chunk < st->nchunks ? bt_chunk_act_in(st->chunks[chunk], mb) : NULL;
}
float *bt_stage_act_out(bt_stage_t *st, int chunk, int mb) {
  return chunk >= 0 && chunk < st->nchunks ? bt_chunk_act_out(st->chunks[chunk], mb) : NULL;
}
float *bt_stage_grad_in(bt_stage_t *st, int chunk, int mb) {
  return chunk >= 0 && chunk < st->nchunks ? bt_chunk_grad_in(st->chunks[chunk], mb) : NULL;
}
float *bt_stage_grad_out(bt_stage_t *st, int chunk, int mb) {
  return chunk >= 0 && chunk < st->nchunks ? bt_chunk_grad_out(st->chunks[chunk], mb) : NULL;
}
size_t bt_stage_act_bytes(const bt_stage_t *st) {
  return (size_t)st->model.mb_tokens * (size_t)st->model.dim * sizeof(float);
}

/* ---- tensors ---- */

size_t bt_stage_tensor_count(const bt_stage_t *st) { return 3 * st->nparam_tensors; }
size_t bt_stage_param_tensor_count(const bt_stage_t *st) { return st->nparam_tensors; }

int bt_stage_tensor(const bt_stage_t *st, size_t i, bt_stage_tensor_t *out) {
  if (i >= 3 * st->nparam_tensors) return BT_EARG;
  int kind = (int)(i / st->nparam_tensors);
  const tensor_ref_t *r = &st->refs[i % st->nparam_tensors];
  const bt_chunk_t *c = st->chunks[r->chunk];
  const bt_layer_t *l = &c->layers[r->layer_local];
  const bt_tensor_desc_t *d = &l->desc.tensors[r->tensor];
  memset(out, 0, sizeof *out);
  out->layer = l->desc.index;
  out->index = r->tensor;
  out->name = d->name;
  out->layer_type = l->desc.type_name;
  out->kind = kind;
  out->ndim = d->ndim;
  memcpy(out->shape, d->shape, sizeof out->shape);
  out->count = d->count;
  out->chunk = r->chunk;
  out->offset = (size_t)(l->p[r->tensor] - c->params);
  out->data = kind == BT_TENSOR_PARAM ? l->p[r->tensor]
              : kind == BT_TENSOR_ADAM_M ? l->m[r->tensor]
                                         : l->v[r->tensor];
  return 0;
}

int bt_stage_tensor_get(bt_stage_t *st, size_t i, float *host) {
  bt_stage_tensor_t t;
  int rc = bt_stage_tensor(st, i, &t);
  if (rc) return rc;
  return st->be->ops->to_host(st->be, host, t.data, t.count * sizeof(float));
}

int bt_stage_tensor_set(bt_stage_t *st, size_t i, const float *host) {
  bt_stage_tensor_t t;
  int rc = bt_stage_tensor(st, i, &t);
  if (rc) return rc;
  return st->be->ops->to_device(st->be, t.data, host, t.count * sizeof(float));
}

int64_t bt_stage_opt_step(const bt_stage_t *st) { return st->opt_step; }
void bt_stage_set_opt_step(bt_stage_t *st, int64_t t) {
  st->opt_step = t;
  st->step = -1;
}

int bt_stage_hash_records(bt_stage_t *st, bt_hash_rec_t *recs, size_t cap, size_t *n) {
  if (cap < st->nparam_tensors) return BT_EARG;
  size_t biggest = 1;
  for (size_t i = 0; i < st->nparam_tensors; i++) {
    bt_stage_tensor_t t;
    bt_stage_tensor(st, i, &t);
    if (t.count > biggest) biggest = t.count;
  }
  float *host = malloc(biggest * sizeof(float));
  if (!host) return -ENOMEM;
  int rc = 0;
  for (size_t i = 0; i < st->nparam_tensors && !rc; i++) {
    bt_stage_tensor_t t;
    bt_stage_tensor(st, i, &t);
    rc = bt_stage_tensor_get(st, i, host);
    if (rc) break;
    memset(&recs[i], 0, sizeof recs[i]);
    recs[i].layer = (uint32_t)t.layer;
    recs[i].index = (uint32_t)t.index;
    snprintf(recs[i].name, sizeof recs[i].name, "%s", t.name);
    recs[i].h = bt_hash_tensor(host, t.count);
  }
  free(host);
  if (!rc) *n = st->nparam_tensors;
  return rc;
}

int bt_stage_count_nonfinite(bt_stage_t *st, size_t *count) {
  size_t total = 0;
  for (int c = 0; c < st->nchunks; c++) {
    size_t k = 0;
    bt_chunk_t *ch = st->chunks[c];
    int rc = st->be->ops->count_nonfinite(st->be, ch->params, ch->nparams, &k);
    if (rc) return rc;
    total += k;
  }
  *count = total;
  return 0;
}
