/* model.c - see model.h. */
#include "common/model.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/data.h"
#include "common/error.h"
#include "common/parse.h"

int bt_model_layer_count(const bt_model_config_t *m) { return m->layers + 2; }

static void tensor(bt_layer_desc_t *l, const char *name, int ndim, int64_t a, int64_t b,
                   int64_t c, int init, double std) {
  bt_tensor_desc_t *t = &l->tensors[l->ntensors++];
  t->name = name;
  t->ndim = ndim;
  t->shape[0] = a;
  t->shape[1] = b;
  t->shape[2] = c;
  t->count = (size_t)a * (size_t)(ndim > 1 ? b : 1) * (size_t)(ndim > 2 ? c : 1);
  t->init = init;
  t->init_std = std;
  l->params += t->count;
}

int bt_model_layer(const bt_model_config_t *m, int layer, bt_layer_desc_t *out) {
  if (layer < 0 || layer > m->layers + 1) return BT_EARG;
  memset(out, 0, sizeof *out);
  out->index = layer;
  const double T = m->mb_tokens, D = m->dim, K = m->context, V = BT_MODEL_VOCAB;
  if (layer == 0) {
    out->type = BT_LAYER_EMBED;
    out->type_name = "embed";
    tensor(out, "tables", 3, m->context, BT_MODEL_VOCAB, m->dim, BT_INIT_NORMAL, 0.02);
    out->flops_f = K * T * D;
    out->flops_i = 0;
    out->flops_w = K * T * D;
  } else if (layer <= m->layers) {
    out->type = BT_LAYER_BLOCK;
    out->type_name = "block";
    int64_t d = m->dim, h = 4 * (int64_t)m->dim;
    tensor(out, "ln_w", 1, d, 0, 0, BT_INIT_ONES, 0);
    tensor(out, "ln_b", 1, d, 0, 0, BT_INIT_ZEROS, 0);
    tensor(out, "w1", 2, h, d, 0, BT_INIT_NORMAL, 0.02);
    tensor(out, "b1", 1, h, 0, 0, BT_INIT_ZEROS, 0);
    tensor(out, "w2", 2, d, h, 0, BT_INIT_NORMAL, 0.02 / sqrt(2.0 * m->layers));
    tensor(out, "b2", 1, d, 0, 0, BT_INIT_ZEROS, 0);
    /* Two matmuls of 2*T*D*4D flops each; elementwise work (layernorm,
     * GELU with erf, bias, residual) counted at a few flops per element. */
    out->flops_f = 16 * T * D * D + 10 * T * D + 4 * T * 4 * D * 5;
    out->flops_i = 16 * T * D * D + 12 * T * D + 4 * T * 4 * D * 6;
    out->flops_w = 16 * T * D * D + 4 * T * 4 * D + 6 * T * D;
  } else {
    out->type = BT_LAYER_HEAD;
    out->type_name = "head";
    tensor(out, "ln_w", 1, m->dim, 0, 0, BT_INIT_ONES, 0);
    tensor(out, "ln_b", 1, m->dim, 0, 0, BT_INIT_ZEROS, 0);
    tensor(out, "wout", 2, BT_MODEL_VOCAB, m->dim, 0, BT_INIT_NORMAL, 0.02);
    out->flops_f = 2 * T * D * V + 8 * T * D + 5 * T * V;
    out->flops_i = 2 * T * D * V + 12 * T * D + 2 * T * V;
    out->flops_w = 2 * T * D * V + 6 * T * D;
  }
  return 0;
}

uint64_t bt_model_param_count(const bt_model_config_t *m) {
  uint64_t n = 0;
  bt_layer_desc_t d;
  /* embed + L identical blocks + head: three descriptions suffice. */
  bt_model_layer(m, 0, &d);
  n += d.params;
  bt_model_layer(m, 1, &d);
  n += (uint64_t)d.params * (uint64_t)m->layers;
  bt_model_layer(m, m->layers + 1, &d);
  n += d.params;
  return n;
}

/* Per micro-batch, what kernels/model.c keeps for one layer (see there):
 * embed: its output; block: output, input gradient, layernorm output,
 * mean, rstd, pre- and post-GELU hidden, hidden gradient, layernorm-output
 * gradient; head: input gradient, layernorm output and its gradient, mean,
 * rstd, logits (reused for their gradient), probabilities, token losses. */
static uint64_t layer_floats(const bt_model_config_t *m, int layer) {
  uint64_t T = (uint64_t)m->mb_tokens, D = (uint64_t)m->dim;
  if (layer == 0) return T * D;
  if (layer <= m->layers) return 16 * T * D + 2 * T;
  return 3 * T * D + 2 * T * BT_MODEL_VOCAB + 3 * T;
}

/* Blocks of first..last (all identical, so counted, not walked). */
static int blocks_in(const bt_model_config_t *m, int first, int last) {
  int lo = first < 1 ? 1 : first, hi = last > m->layers ? m->layers : last;
  return hi >= lo ? hi - lo + 1 : 0;
}

uint64_t bt_model_activation_floats(const bt_model_config_t *m, int first, int last) {
  uint64_t T = (uint64_t)m->mb_tokens, D = (uint64_t)m->dim;
  uint64_t n = layer_floats(m, 1) * (uint64_t)blocks_in(m, first, last);
  if (first == 0) n += layer_floats(m, 0);
  if (last == m->layers + 1) n += layer_floats(m, last);
  if (first > 0) n += T * D;             /* received activation */
  if (last < m->layers + 1) n += T * D;  /* received gradient */
  if (first == 0 || last == m->layers + 1)
    n += ((uint64_t)m->context + T + 1 + 3) / 4; /* data bytes */
  return n;
}

double bt_model_flops(const bt_model_config_t *m) { return bt_model_range_cost(m, 0, m->layers + 1); }

static double layer_cost(const bt_model_config_t *m, int layer) {
  bt_layer_desc_t d;
  bt_model_layer(m, layer, &d);
  return d.flops_f + d.flops_i + d.flops_w;
}

double bt_model_range_cost(const bt_model_config_t *m, int first, int last) {
  if (first < 0) first = 0;
  if (last > m->layers + 1) last = m->layers + 1;
  if (first > last) return 0;
  double c = layer_cost(m, 1) * blocks_in(m, first, last);
  if (first == 0) c += layer_cost(m, 0);
  if (last == m->layers + 1) c += layer_cost(m, last);
  return c;
}

void bt_model_init_tensor(const bt_model_config_t *m, int layer, int tensor,
                          const bt_tensor_desc_t *d, float *out) {
  for (size_t i = 0; i < d->count; i++) {
    if (d->init == BT_INIT_ONES) out[i] = 1.0f;
    else if (d->init == BT_INIT_ZEROS) out[i] = 0.0f;
    else
      out[i] = (float)(d->init_std * bt_rng_normal((uint64_t)m->seed, (uint64_t)layer,
                                                   (uint64_t)tensor, (uint64_t)i));
  }
}

int bt_model_layout_parse(const bt_model_config_t *m, const char *text, int nstages, int *counts,
                          int max, int *n, char *err, size_t errlen) {
  size_t got = 0;
  int total = bt_model_layer_count(m);
  if (bt_parse_ints(text, 1, total, counts, (size_t)max, &got)) {
    bt_errf(err, errlen, "--layout '%s': expected comma-separated layer counts, each in [1, %d]",
            text, total);
    return BT_EARG;
  }
  int sum = 0;
  for (size_t i = 0; i < got; i++) sum += counts[i];
  if (sum != total) {
    bt_errf(err, errlen, "--layout '%s' covers %d layers, the model has %d (L+2)", text, sum,
            total);
    return BT_EARG;
  }
  if (nstages > 0 && (int)got != nstages) {
    bt_errf(err, errlen, "--layout '%s' has %zu virtual stages, expected %d", text, got, nstages);
    return BT_EARG;
  }
  *n = (int)got;
  return 0;
}

/* Greedy packing under cap: each stage takes layers while its cost stays
 * within cap and enough layers remain for the stages after it. Returns the
 * number of stages used (> nstages when cap is too small). */
static int pack(const double *cost, int nl, int nstages, double cap, int *counts) {
  int s = 0, i = 0;
  while (i < nl) {
    double c = cost[i];
    int j = i + 1;
    while (j < nl && c + cost[j] <= cap && nl - (j + 1) >= nstages - s - 1) c += cost[j++];
    if (counts && s < nstages) counts[s] = j - i;
    s++;
    i = j;
  }
  return s;
}

int bt_model_layout_balanced(const bt_model_config_t *m, int nstages, int *counts) {
  int nl = bt_model_layer_count(m);
  if (nstages < 1 || nstages > nl) return BT_EARG;
  double *cost = malloc((size_t)nl * sizeof *cost);
  if (!cost) return -ENOMEM;
  double lo = 0, hi = 0;
  for (int l = 0; l < nl; l++) {
    cost[l] = bt_model_range_cost(m, l, l);
    if (cost[l] > lo) lo = cost[l];
    hi += cost[l];
  }
  /* Bisection on the bottleneck. pack() never uses fewer than nstages
   * stages (it reserves a layer for each later stage), and under a feasible
   * cap it uses exactly nstages: its stage boundaries never fall behind
   * those of any feasible split, since costs are non-negative. */
  if (pack(cost, nl, nstages, lo, NULL) <= nstages) hi = lo;
  for (int it = 0; it < 200 && hi - lo > 1e-9 * hi; it++) {
    double mid = lo + (hi - lo) / 2;
    if (pack(cost, nl, nstages, mid, NULL) <= nstages) hi = mid;
    else lo = mid;
  }
  pack(cost, nl, nstages, hi, counts);
  free(cost);
  return 0;
}
