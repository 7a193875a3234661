/* stage_ckpt.c - see stage_ckpt.h. */
#include "worker/stage_ckpt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/model.h"

static char *config_text(const bt_config_t *c, int part) {
  size_t n = bt_config_to_text(c, part, NULL, 0);
  char *s = malloc(n + 1);
  if (s) bt_config_to_text(c, part, s, n + 1);
  return s;
}

int bt_stage_ckpt_init(bt_stage_ckpt_t *c, bt_stage_t *st, const bt_config_t *cfg, uint32_t stage,
                       uint32_t stages, uint32_t chunks) {
  memset(c, 0, sizeof *c);
  c->stage = stage;
  c->stages = stages;
  c->chunks = chunks;
  c->layer_count = (uint32_t)bt_model_layer_count(&cfg->model);
  c->seed = (uint64_t)cfg->model.seed;
  c->n = bt_stage_tensor_count(st);
  c->desc = calloc(c->n ? c->n : 1, sizeof *c->desc);
  c->model_text = config_text(cfg, BT_CONFIG_MODEL);
  c->run_text = config_text(cfg, BT_CONFIG_RUN);
  if (!c->desc || !c->model_text || !c->run_text) return -ENOMEM;
  for (size_t i = 0; i < c->n; i++) {
    bt_stage_tensor_t t;
    bt_ckpt_tensor_t *d = &c->desc[i];
    int rc = bt_stage_tensor(st, i, &t);
    if (rc) return rc;
    d->layer = (uint32_t)t.layer;
    d->index = (uint32_t)t.index;
    snprintf(d->name, sizeof d->name, "%s", t.name);
    /* bt_tensor_kind_t and bt_ckpt_kind_t number param, m, v alike. */
    d->kind = t.kind;
    d->ndim = t.ndim;
    for (int k = 0; k < t.ndim; k++) d->dims[k] = (uint64_t)t.shape[k];
  }
  return 0;
}

void bt_stage_ckpt_free(bt_stage_ckpt_t *c) {
  free(c->desc);
  free(c->model_text);
  free(c->run_text);
  memset(c, 0, sizeof *c);
}

int bt_stage_ckpt_load(const bt_stage_ckpt_t *c, bt_stage_t *st, const bt_ckpt_step_t *src) {
  /* `baton train` and every worker step AdamW once per step: another count
   * means the shard was not written by this code. */
  if (src->man.meta.adam_t != src->man.meta.step) return BT_ECORRUPT;
  size_t total = 0;
  for (size_t i = 0; i < c->n; i++) total += bt_ckpt_numel(&c->desc[i]);
  float *host = malloc((total ? total : 1) * sizeof *host);
  bt_ckpt_tensor_t *want = malloc((c->n ? c->n : 1) * sizeof *want);
  int rc = 0;
  if (!host || !want) {
    rc = -ENOMEM;
    goto out;
  }
  size_t off = 0;
  for (size_t i = 0; i < c->n; i++) {
    want[i] = c->desc[i];
    want[i].data = host + off;
    off += bt_ckpt_numel(&c->desc[i]);
  }
  if ((rc = bt_ckpt_step_load(src, want, c->n)) < 0) goto out;
  for (size_t i = 0; i < c->n && rc == 0; i++) rc = bt_stage_tensor_set(st, i, want[i].data);
  if (rc == 0) bt_stage_set_opt_step(st, src->man.meta.adam_t);
out:
  free(want);
  free(host);
  return rc;
}

static int get_tensor(void *arg, size_t i, float *dst) { return bt_stage_tensor_get(arg, i, dst); }

int bt_stage_ckpt_save(const bt_stage_ckpt_t *c, bt_stage_t *st, bt_ckpt_writer_t *w, int64_t step,
                       bt_ckpt_fill_fn fill, void *arg, int64_t timeout_ms, size_t *nonfinite) {
  size_t bad = 0;
  int rc = bt_stage_count_nonfinite(st, &bad);
  if (nonfinite) *nonfinite = bad;
  if (rc < 0) return rc;
  if (bad) return BT_ENONFINITE;
  bt_ckpt_meta_t meta = {
      .step = step,
      .stage = c->stage,
      .stages = c->stages,
      .chunks = c->chunks,
      .layer_count = c->layer_count,
      .seed = c->seed,
      .adam_t = bt_stage_opt_step(st),
      .model_config = c->model_text,
      .run_settings = c->run_text,
  };
  if (!fill) {
    fill = get_tensor;
    arg = st;
  }
  return bt_ckpt_save_async_fill(w, &meta, c->desc, c->n, fill, arg, timeout_ms);
}

int bt_stage_ckpt_hash(bt_stage_t *st, bt_hash_rec_t **recs, size_t *n) {
  size_t cap = bt_stage_param_tensor_count(st);
  *recs = calloc(cap ? cap : 1, sizeof **recs);
  *n = 0;
  if (!*recs) return -ENOMEM;
  int rc = bt_stage_hash_records(st, *recs, cap, n);
  if (rc) {
    free(*recs);
    *recs = NULL;
  }
  return rc;
}
