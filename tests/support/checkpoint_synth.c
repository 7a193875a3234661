/* checkpoint_synth.c - see checkpoint_synth.h. */
#include "tests/support/checkpoint_synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  int ndim;
  uint64_t dims[3];
} spec_t;

static const spec_t embed[] = {{"tables", 3, {2, 16, 8}}};
static const spec_t block[] = {{"W1", 2, {32, 8}}, {"b1", 1, {32}}, {"W2", 2, {8, 32}},
                               {"b2", 1, {8}},     {"ln_g", 1, {8}}, {"ln_b", 1, {8}}};
static const spec_t head[] = {{"ln_g", 1, {8}}, {"ln_b", 1, {8}}, {"Wout", 2, {16, 8}}};

static const spec_t *specs(uint32_t layer, uint32_t count, size_t *n) {
  if (layer == 0) {
    *n = sizeof embed / sizeof embed[0];
    return embed;
  }
  if (layer + 1 == count) {
    *n = sizeof head / sizeof head[0];
    return head;
  }
  *n = sizeof block / sizeof block[0];
  return block;
}

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static float value(uint64_t seed, int64_t step, uint32_t layer, uint32_t idx, int kind, size_t e) {
  uint64_t h = mix(seed ^ mix((uint64_t)step * 1000003u ^ mix(((uint64_t)layer << 32) | idx) ^
                              mix((uint64_t)kind << 56 | e)));
  float u = (float)((h >> 40) * (1.0 / 16777216.0)); /* [0, 1) */
  return kind == BT_CKPT_ADAM_V ? u * 1e-3f : (u - 0.5f) * 0.2f;
}

static int build(ckpt_synth_t *s, uint32_t lo, uint32_t hi, uint32_t count, uint64_t seed,
                 int64_t step, int with_optim, int fill) {
  memset(s, 0, sizeof *s);
  int kinds = with_optim ? 3 : 1;
  size_t nt = 0, total = 0;
  for (uint32_t l = lo; l < hi; l++) {
    size_t k;
    const spec_t *sp = specs(l, count, &k);
    for (size_t i = 0; i < k; i++) {
      size_t e = 1;
      for (int d = 0; d < sp[i].ndim; d++) e *= sp[i].dims[d];
      total += e * (size_t)kinds;
    }
    nt += k * (size_t)kinds;
  }
  s->t = calloc(nt ? nt : 1, sizeof *s->t);
  s->buf = calloc(total ? total : 1, sizeof *s->buf);
  if (!s->t || !s->buf) {
    ckpt_synth_free(s);
    return -ENOMEM;
  }
  size_t off = 0;
  for (int kind = 0; kind < kinds; kind++)
    for (uint32_t l = lo; l < hi; l++) {
      size_t k;
      const spec_t *sp = specs(l, count, &k);
      for (size_t i = 0; i < k; i++) {
        bt_ckpt_tensor_t *t = &s->t[s->n++];
        t->layer = l;
        t->index = (uint32_t)i;
        snprintf(t->name, sizeof t->name, "%s", sp[i].name);
        t->kind = kind;
        t->ndim = sp[i].ndim;
        for (int d = 0; d < sp[i].ndim; d++) t->dims[d] = sp[i].dims[d];
        t->data = s->buf + off;
        size_t e = bt_ckpt_numel(t);
        if (fill)
          for (size_t j = 0; j < e; j++) t->data[j] = value(seed, step, l, (uint32_t)i, kind, j);
        off += e;
      }
    }
  return 0;
}

int ckpt_synth_make(ckpt_synth_t *s, uint32_t lo, uint32_t hi, uint32_t layer_count,
                    uint64_t seed, int64_t step, int with_optim) {
  return build(s, lo, hi, layer_count, seed, step, with_optim, 1);
}

int ckpt_synth_empty(ckpt_synth_t *s, uint32_t lo, uint32_t hi, uint32_t layer_count,
                     int with_optim) {
  return build(s, lo, hi, layer_count, 0, 0, with_optim, 0);
}

void ckpt_synth_free(ckpt_synth_t *s) {
  free(s->t);
  free(s->buf);
  memset(s, 0, sizeof *s);
}

bt_ckpt_meta_t ckpt_synth_meta(int64_t step, uint32_t stage, uint32_t stages,
                               uint32_t layer_count, uint64_t seed) {
  static char cfg[128];
  snprintf(cfg, sizeof cfg, "layers=%u\nwidth=8\nseed=%llu\nnote=\"quoted\\text\"\n",
           layer_count - 2, (unsigned long long)seed);
  return (bt_ckpt_meta_t){.step = step,
                          .stage = stage,
                          .stages = stages,
                          .chunks = 1,
                          .layer_count = layer_count,
                          .seed = seed,
                          .adam_t = step,
                          .model_config = cfg,
                          .run_settings = "schedule=1f1b\tsteps=100"};
}

int ckpt_synth_save_step(const char *root, int64_t step, uint32_t layer_count,
                         const uint32_t *bounds, uint32_t stages, uint64_t seed,
                         const bt_ckpt_opts_t *opts) {
  bt_msg_shard_t *rep = calloc(stages, sizeof *rep);
  int rc = rep ? 0 : -ENOMEM;
  for (uint32_t s = 0; s < stages && rc == 0; s++) {
    ckpt_synth_t sy;
    if ((rc = ckpt_synth_make(&sy, bounds[s], bounds[s + 1], layer_count, seed, step, 1)) < 0)
      break;
    bt_ckpt_meta_t m = ckpt_synth_meta(step, s, stages, layer_count, seed);
    rc = bt_ckpt_save(root, &m, sy.t, sy.n, opts, &rep[s]);
    ckpt_synth_free(&sy);
  }
  if (rc == 0) rc = bt_ckpt_commit(root, step, rep, stages);
  free(rep);
  return rc;
}

void ckpt_synth_tmpdir(char *out, size_t len) {
  snprintf(out, len, "/tmp/bt-ckpt-XXXXXX");
  if (!mkdtemp(out)) out[0] = 0;
}
