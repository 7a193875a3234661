/* restore.c - finding, verifying and loading committed steps (resharding).
 *
 * A step is opened through its manifest only: shards are found by the names
 * it lists (relative to the step directory) and checked against its sizes
 * and CRCs; tensors are found through its layer-to-shard map, so a step
 * saved by any number of stages loads onto any other. Restore walks the
 * committed steps newest first and says why it skips one. Not here: writing
 * (shard.c, commit.c), deciding whether a configuration matches (the caller
 * compares the text in st->man.meta).
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/internal.h"
#include "common/crc.h"
#include "common/log.h"

typedef struct {
  bt_ckpt_problem_fn fn;
  void *arg;
  const char *where;  /* the step directory's last component */
  int rc;             /* the first problem's code */
  char first[768];
} probs_t;

__attribute__((format(printf, 3, 4))) static void problem(probs_t *pr, int code, const char *fmt,
                                                          ...) {
  char line[768];
  va_list ap;
  va_start(ap, fmt);
  int k = snprintf(line, sizeof line, "%s: ", pr->where);
  vsnprintf(line + k, sizeof line - (size_t)k, fmt, ap);
  va_end(ap);
  if (!pr->rc) {
    pr->rc = code;
    snprintf(pr->first, sizeof pr->first, "%s", line);
  }
  if (pr->fn) pr->fn(pr->arg, line);
}

static const char *base_name(const char *path) {
  size_t n = strlen(path);
  while (n > 1 && path[n - 1] == '/') n--;
  const char *p = path + n;
  while (p > path && p[-1] != '/') p--;
  return p;
}

static int str_eq(const char *a, const char *b) { return !strcmp(a ? a : "", b ? b : ""); }

/* Checks one shard against the manifest: its root attributes and the
 * layers the map gives it (cheap: attributes only); with `datasets`, also
 * every dataset's CRC. */
static void shard_check(const bt_ckpt_step_t *st, uint32_t si, const char *path, int datasets,
                        probs_t *pr) {
  const bt_ckpt_manifest_t *m = &st->man;
  const bt_ckpt_shard_info_t *info = &m->shards[si];
  bt_ckpt_shard_t *sh = NULL;
  bt_ckpt_tensor_t *ts = NULL;
  size_t nt = 0;
  float *buf = NULL;
  size_t bufn = 0;
  int rc = bt_ckpt_shard_open(path, &sh);
  if (rc < 0) {
    problem(pr, BT_ECORRUPT, "%s: cannot be read as a shard: %s", info->file, bt_strerror(rc));
    return;
  }
  const bt_ckpt_meta_t *sm = bt_ckpt_shard_meta(sh);
  if (sm->step != m->meta.step || sm->stage != info->stage || sm->stages != m->meta.stages ||
      sm->layer_count != m->meta.layer_count || sm->chunks != m->meta.chunks ||
      sm->seed != m->meta.seed || sm->adam_t != m->meta.adam_t ||
      !str_eq(sm->model_config, m->meta.model_config) ||
      !str_eq(sm->run_settings, m->meta.run_settings))
    problem(pr, BT_ECORRUPT, "%s: root attributes disagree with the manifest", info->file);
  size_t nl;
  const uint32_t *layers = bt_ckpt_shard_layers(sh, &nl);
  size_t mapped = 0;
  for (uint32_t l = 0; l < m->meta.layer_count; l++) mapped += m->layer_shard[l] == si;
  int layers_ok = nl == mapped;
  for (size_t k = 0; k < nl && layers_ok; k++)
    layers_ok = layers[k] < m->meta.layer_count && m->layer_shard[layers[k]] == si;
  if (!layers_ok)
    problem(pr, BT_ECORRUPT, "%s: holds other layers than the manifest's map gives it",
            info->file);
  if (!datasets) goto out;
  if ((rc = bt_ckpt_shard_list(sh, &ts, &nt)) < 0) {
    problem(pr, BT_ECORRUPT, "%s: cannot list its datasets: %s", info->file, bt_strerror(rc));
    goto out;
  }
  for (size_t k = 0; k < nl; k++) {
    int any = 0;
    for (size_t i = 0; i < nt && !any; i++) any = ts[i].layer == layers[k];
    if (!any) problem(pr, BT_ECORRUPT, "%s: layer %u has no tensors", info->file, layers[k]);
  }
  for (size_t i = 0; i < nt; i++) {
    bt_ckpt_tensor_t *t = &ts[i];
    int held = 0;
    for (size_t k = 0; k < nl && !held; k++) held = layers[k] == t->layer;
    if (!held)
      problem(pr, BT_ECORRUPT, "%s: tensor '%s' of layer %u is outside the shard's layers",
              info->file, t->name, t->layer);
    if (i > 0 && ts[i - 1].layer == t->layer && ts[i - 1].kind == t->kind &&
        ts[i - 1].index == t->index)
      problem(pr, BT_ECORRUPT, "%s: layer %u has two tensors with index %u", info->file, t->layer,
              t->index);
    size_t ne = bt_ckpt_numel(t);
    if (ne > bufn) {
      float *nb = realloc(buf, ne * sizeof *nb);
      if (!nb) {
        problem(pr, -ENOMEM, "%s: out of memory", info->file);
        goto out;
      }
      buf = nb;
      bufn = ne;
    }
    t->data = buf;
    rc = bt_ckpt_shard_read(sh, t, NULL);
    t->data = NULL;
    if (rc == BT_ECRC)
      problem(pr, BT_ECRC, "%s: tensor '%s' of layer %u fails its CRC", info->file, t->name,
              t->layer);
    else if (rc < 0)
      problem(pr, BT_ECORRUPT, "%s: tensor '%s' of layer %u cannot be read: %s", info->file,
              t->name, t->layer, bt_strerror(rc));
  }
out:
  free(buf);
  free(ts);
  bt_ckpt_shard_close(sh);
}

/* 1 when shard si holds a layer of one of the wanted tensors (every shard
 * when want is NULL). */
static int shard_wanted(const bt_ckpt_manifest_t *m, uint32_t si, const bt_ckpt_tensor_t *want,
                        size_t n) {
  if (!want) return 1;
  for (size_t i = 0; i < n; i++)
    if (want[i].layer < m->meta.layer_count && m->layer_shard[want[i].layer] == si) return 1;
  return 0;
}

/* Opens and checks a step. With `want`, the CRC and attribute checks cover
 * only the shards holding those tensors' layers: p workers restoring their
 * own layers then read the checkpoint about once in all, not p times.
 * Every shard's presence and size is checked regardless. */
static int step_open(const char *step_dir, int level, bt_ckpt_step_t *st, probs_t *pr,
                     const bt_ckpt_tensor_t *want, size_t nwant) {
  char path[PATH_MAX], err[256];
  memset(st, 0, sizeof *st);
  bt_h5_thread_init();
  if (snprintf(st->dir, sizeof st->dir, "%s", step_dir) >= (int)sizeof st->dir ||
      snprintf(path, sizeof path, "%s/%s", step_dir, BT_CKPT_MANIFEST) >= (int)sizeof path)
    return -ENAMETOOLONG;
  if (access(path, F_OK) < 0) {
    problem(pr, BT_ENOTCKPT, "no %s (not a committed step)", BT_CKPT_MANIFEST);
    return BT_ENOTCKPT;
  }
  int rc = bt_ckpt_manifest_read(path, &st->man, err, sizeof err);
  if (rc < 0) {
    /* A manifest that is a FIFO, a device or a directory was never written
     * by baton: not a checkpoint, rather than a damaged one. */
    int code = rc == BT_EVERSION ? BT_EVERSION
               : rc == BT_ENOTREG || rc == -EISDIR ? BT_ENOTCKPT : BT_ECORRUPT;
    problem(pr, code, "%s: %s", BT_CKPT_MANIFEST, err);
    return pr->rc;
  }
  st->step = st->man.meta.step;
  int64_t named;
  int tmp;
  if (bt_parse_step_name(base_name(step_dir), &named, &tmp) && named != st->step)
    problem(pr, BT_ECORRUPT, "%s says step %lld", BT_CKPT_MANIFEST, (long long)st->step);
  for (uint32_t i = 0; i < st->man.nshards; i++) {
    const bt_ckpt_shard_info_t *info = &st->man.shards[i];
    struct stat sb;
    if (snprintf(path, sizeof path, "%s/%s", step_dir, info->file) >= (int)sizeof path) {
      problem(pr, BT_ECORRUPT, "%s: path too long", info->file);
      continue;
    }
    if (stat(path, &sb) < 0) {
      problem(pr, BT_ECORRUPT, "%s: %s", info->file, errno == ENOENT ? "missing" : strerror(errno));
      continue;
    }
    /* A FIFO or a link to a device (size 0 in a forged manifest) would
     * block or spin the CRC pass below: refused before anything reads it. */
    if (!S_ISREG(sb.st_mode)) {
      problem(pr, BT_ECORRUPT, "%s: %s", info->file, bt_strerror(BT_ENOTREG));
      continue;
    }
    if ((uint64_t)sb.st_size != info->size) {
      problem(pr, BT_ECORRUPT, "%s: %lld bytes, the manifest says %llu", info->file,
              (long long)sb.st_size, (unsigned long long)info->size);
      continue;
    }
    if (level >= BT_CKPT_CHECK_CRC && shard_wanted(&st->man, i, want, nwant)) {
      uint32_t crc;
      uint64_t size;
      if ((rc = bt_crc32_file(path, &crc, &size)) < 0) {
        problem(pr, BT_ECORRUPT, "%s: %s", info->file, bt_strerror(rc));
        continue;
      }
      if (crc != info->crc || size != info->size) {
        problem(pr, BT_ECRC, "%s: file CRC %08x, the manifest says %08x", info->file, crc,
                info->crc);
        /* Not parsed any further: HDF5 is not hardened against damaged
         * files (a flipped bit can make it loop), and this one is. */
        continue;
      }
      st->file_crc_ok[i] = 1;
    }
    if (level >= BT_CKPT_CHECK_CRC && shard_wanted(&st->man, i, want, nwant))
      shard_check(st, i, path, level >= BT_CKPT_CHECK_DEEP, pr);
  }
  if (pr->rc) {
    bt_ckpt_manifest_free(&st->man);
    return pr->rc;
  }
  return 0;
}

int bt_ckpt_step_open(const char *step_dir, int level, bt_ckpt_step_t *st,
                      bt_ckpt_problem_fn fn, void *arg) {
  probs_t pr = {.fn = fn, .arg = arg, .where = base_name(step_dir)};
  return step_open(step_dir, level, st, &pr, NULL, 0);
}

void bt_ckpt_step_close(bt_ckpt_step_t *st) { bt_ckpt_manifest_free(&st->man); }

static const char *kind_name(int kind) {
  return kind == BT_CKPT_PARAM ? "" : kind == BT_CKPT_ADAM_M ? " (adam m)" : " (adam v)";
}

int bt_ckpt_step_load(const bt_ckpt_step_t *st, bt_ckpt_tensor_t *want, size_t n) {
  const bt_ckpt_manifest_t *m = &st->man;
  char path[PATH_MAX];
  bt_ckpt_shard_t *sh = NULL;
  int rc = 0;
  bt_h5_thread_init();
  for (size_t i = 0; i < n; i++)
    if (want[i].layer >= m->meta.layer_count) {
      bt_error("restore: layer %u is past the %u layers of %s", want[i].layer, m->meta.layer_count,
               st->dir);
      return BT_ECONFIG;
    }
  /* Shard by shard, so each file is opened once whatever the new split. */
  for (uint32_t si = 0; si < m->nshards; si++) {
    for (size_t i = 0; i < n; i++) {
      bt_ckpt_tensor_t *t = &want[i];
      if (m->layer_shard[t->layer] != si) continue;
      if (!sh) {
        if (snprintf(path, sizeof path, "%s/%s", st->dir, m->shards[si].file) >= (int)sizeof path) {
          rc = -ENAMETOOLONG;
          goto out;
        }
        if ((rc = bt_ckpt_shard_open(path, &sh)) < 0) {
          bt_error("restore: %s: %s", path, bt_strerror(rc));
          goto out;
        }
        if (bt_ckpt_shard_meta(sh)->step != st->step) {
          bt_error("restore: %s holds step %lld, not %lld", path,
                   (long long)bt_ckpt_shard_meta(sh)->step, (long long)st->step);
          rc = BT_ECORRUPT;
          goto out;
        }
      }
      if ((rc = bt_ckpt_shard_read_checked(sh, t, NULL, !st->file_crc_ok[si])) < 0) {
        if (rc == BT_ECONFIG)
          bt_error("restore: %s has no tensor '%s'%s of layer %u with %d dims, index %u "
                   "(the model differs from the checkpoint's)",
                   path, t->name, kind_name(t->kind), t->layer, t->ndim, t->index);
        else
          bt_error("restore: %s: tensor '%s' of layer %u: %s", path, t->name, t->layer,
                   bt_strerror(rc));
        goto out;
      }
    }
    if (sh) {
      bt_ckpt_shard_close(sh);
      sh = NULL;
    }
  }
out:
  if (sh) bt_ckpt_shard_close(sh);
  return rc;
}

static int cmp_desc(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x > y ? -1 : x < y;
}

int bt_ckpt_list_steps(const char *root, int64_t **steps, size_t *n) {
  DIR *d = opendir(root);
  if (!d) return -errno;
  int64_t *v = NULL;
  size_t k = 0, cap = 0;
  int rc = 0;
  struct dirent *e;
  char p[PATH_MAX];
  while ((e = readdir(d))) {
    int64_t s;
    int tmp;
    if (!bt_parse_step_name(e->d_name, &s, &tmp) || tmp) continue;
    if (snprintf(p, sizeof p, "%s/%s/%s", root, e->d_name, BT_CKPT_MANIFEST) >= (int)sizeof p)
      continue;
    if (access(p, F_OK) < 0) continue;
    if (k == cap) {
      cap = cap ? cap * 2 : 16;
      int64_t *nv = realloc(v, cap * sizeof *nv);
      if (!nv) {
        rc = -ENOMEM;
        goto out;
      }
      v = nv;
    }
    v[k++] = s;
  }
  if (k) qsort(v, k, sizeof *v, cmp_desc);
  *steps = v;
  *n = k;
  v = NULL;
out:
  free(v);
  closedir(d);
  return rc;
}

int bt_ckpt_restore(const char *root, bt_ckpt_tensor_t *want, size_t n, bt_ckpt_step_t *st) {
  int64_t *steps = NULL;
  size_t ns = 0;
  char dir[PATH_MAX];
  int rc = bt_ckpt_list_steps(root, &steps, &ns);
  if (rc < 0) return rc;
  rc = -ENOENT;
  for (size_t i = 0; i < ns; i++) {
    if ((rc = bt_ckpt_step_path(root, steps[i], 0, dir, sizeof dir)) < 0) break;
    probs_t pr = {.where = base_name(dir)};
    rc = step_open(dir, BT_CKPT_CHECK_CRC, st, &pr, n ? want : NULL, n);
    if (rc < 0) {
      bt_warn("restore: skipping %s (%s)%s", dir, pr.first,
              i + 1 < ns ? "; trying the previous step" : "");
      rc = -ENOENT;
      continue;
    }
    if (n == 0) break;
    rc = bt_ckpt_step_load(st, want, n);
    if (rc == 0) break;
    bt_ckpt_step_close(st);
    if (rc == BT_ECONFIG) break;
    bt_warn("restore: skipping %s (loading failed: %s)%s", dir, bt_strerror(rc),
            i + 1 < ns ? "; trying the previous step" : "");
    rc = -ENOENT;
  }
  if (rc == -ENOENT) bt_warn("restore: no usable committed step in %s", root);
  if (rc == 0) bt_info("restore: loaded step %lld from %s", (long long)st->step, st->dir);
  free(steps);
  return rc;
}

int bt_ckpt_open_latest(const char *root, int level, bt_ckpt_step_t *st) {
  int64_t *steps = NULL;
  size_t ns = 0;
  char dir[PATH_MAX];
  int rc = bt_ckpt_list_steps(root, &steps, &ns);
  if (rc < 0) return rc;
  rc = -ENOENT;
  for (size_t i = 0; i < ns; i++) {
    if ((rc = bt_ckpt_step_path(root, steps[i], 0, dir, sizeof dir)) < 0) break;
    probs_t pr = {.where = base_name(dir)};
    if ((rc = step_open(dir, level, st, &pr, NULL, 0)) == 0) break;
    bt_warn("checkpoint: skipping %s (%s)%s", dir, pr.first,
            i + 1 < ns ? "; trying the previous step" : "");
    rc = -ENOENT;
  }
  free(steps);
  return rc;
}
