/* hash.c - the parameter hash (DESIGN.md §8) of a checkpoint, from its
 * files alone.
 *
 * One reader for both users: `baton ckpt hash` (any path: a step, a root,
 * a lone shard) and `baton run` finding its checkpoint already at the last
 * step (it prints the hash training would have printed). Each parameter
 * dataset is read with its CRC checked and hashed alone; memory stays at
 * the largest tensor. Not here: hashing live tensors (worker/stage.c) and
 * combining records (common/hash.c).
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/internal.h"

typedef struct {
  bt_ckpt_problem_fn fn;
  void *arg;
  int rc;              /* the first problem's code */
  bt_hash_rec_t *recs;
  size_t n, cap;
  float *buf;
  size_t bufcap;       /* floats */
} hasher_t;

__attribute__((format(printf, 3, 4))) static void problem(hasher_t *h, int code, const char *fmt,
                                                          ...) {
  char line[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (!h->rc) h->rc = code;
  if (h->fn) h->fn(h->arg, line);
}

/* Room for one more record and a tensor of `numel` floats. */
static int grow(hasher_t *h, size_t numel) {
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    bt_hash_rec_t *r = realloc(h->recs, cap * sizeof *r);
    if (!r) return -ENOMEM;
    h->recs = r;
    h->cap = cap;
  }
  if (numel > h->bufcap) {
    float *b = realloc(h->buf, numel * sizeof *b);
    if (!b) return -ENOMEM;
    h->buf = b;
    h->bufcap = numel;
  }
  return 0;
}

/* Appends a record per parameter of the shard at `path`; a shard or
 * tensor that cannot be read is a problem, and the rest goes on. */
static int hash_shard(hasher_t *h, const char *path) {
  bt_ckpt_shard_t *sh = NULL;
  bt_ckpt_tensor_t *t = NULL;
  size_t nt = 0;
  int rc = bt_ckpt_shard_open(path, &sh);
  if (rc < 0) {
    problem(h, rc, "%s: cannot be read as a shard: %s", path, bt_strerror(rc));
    return 0;
  }
  if ((rc = bt_ckpt_shard_list(sh, &t, &nt)) < 0) {
    problem(h, rc, "%s: cannot list its datasets: %s", path, bt_strerror(rc));
    rc = 0;
  }
  for (size_t i = 0; i < nt && rc == 0; i++) {
    if (t[i].kind != BT_CKPT_PARAM) continue;
    size_t numel = bt_ckpt_numel(&t[i]);
    if ((rc = grow(h, numel)) < 0) break;
    t[i].data = h->buf;
    int r = bt_ckpt_shard_read(sh, &t[i], NULL);
    if (r < 0) {
      problem(h, r, "%s: tensor '%s' (param) of layer %u: %s", path, t[i].name, t[i].layer,
              r == BT_ECRC ? "fails its CRC" : bt_strerror(r));
      continue;
    }
    bt_hash_rec_t *rec = &h->recs[h->n++];
    memset(rec, 0, sizeof *rec);
    rec->layer = t[i].layer;
    rec->index = t[i].index;
    snprintf(rec->name, sizeof rec->name, "%s", t[i].name);
    rec->h = bt_hash_tensor(h->buf, numel);
  }
  free(t);
  bt_ckpt_shard_close(sh);
  return rc;
}

int bt_ckpt_hash_files(const char *const *files, size_t n, bt_hash128_t *out,
                       bt_ckpt_problem_fn fn, void *arg) {
  hasher_t h = {.fn = fn, .arg = arg};
  int rc = 0;
  bt_h5_thread_init();
  for (size_t f = 0; f < n && rc == 0; f++) rc = hash_shard(&h, files[f]);
  if (rc == 0) rc = h.rc;
  if (rc == 0 && bt_hash_combine(h.recs, h.n, out) < 0) {
    problem(&h, BT_ECORRUPT, "two parameter tensors share a layer and index");
    rc = BT_ECORRUPT;
  }
  free(h.recs);
  free(h.buf);
  return rc;
}

int bt_ckpt_step_hash(const char *step_dir, bt_hash128_t *out) {
  bt_ckpt_step_t st;
  memset(&st, 0, sizeof st);
  int rc = bt_ckpt_step_open(step_dir, BT_CKPT_CHECK_CRC, &st, NULL, NULL);
  if (rc < 0) return rc;
  uint32_t n = st.man.nshards;
  char (*paths)[PATH_MAX] = calloc(n ? n : 1, sizeof *paths);
  const char **files = calloc(n ? n : 1, sizeof *files);
  if (!paths || !files) {
    rc = -ENOMEM;
  } else {
    for (uint32_t i = 0; i < n && rc == 0; i++) {
      if (snprintf(paths[i], sizeof paths[i], "%s/%s", step_dir, st.man.shards[i].file) >=
          (int)sizeof paths[i])
        rc = -ENAMETOOLONG;
      files[i] = paths[i];
    }
    if (rc == 0) rc = bt_ckpt_hash_files(files, n, out, NULL, NULL);
  }
  free(files);
  free(paths);
  bt_ckpt_step_close(&st);
  return rc;
}
