/* retain.c - retention: which committed steps to keep, and cleaning up
 * what crashed writers left behind.
 *
 * Keeps the newest N committed steps and every K-th, never the newest step
 * that passes the cheap check (so a torn newest step never leaves the job
 * with nothing) nor one the caller protects. A step is deleted by first
 * removing its manifest, so a crash half-way through the deletion leaves an
 * uncommitted directory that restore ignores, never a committed but partial
 * step. Temporary and manifest-less step directories are removed only when
 * older than the newest commit: a newer one may still be being written.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint/internal.h"
#include "common/log.h"

typedef struct {
  int64_t step;
  int tmp, committed;
  char name[64];
} entry_t;

static int cmp_entry(const void *a, const void *b) {
  const entry_t *x = a, *y = b;
  if (x->step != y->step) return x->step > y->step ? -1 : 1;
  return x->tmp - y->tmp;
}

static int scan(const char *root, entry_t **out, size_t *n) {
  DIR *d = opendir(root);
  if (!d) return -errno;
  entry_t *v = NULL;
  size_t k = 0, cap = 0;
  int rc = 0;
  struct dirent *e;
  char p[PATH_MAX];
  while ((e = readdir(d))) {
    int64_t s;
    int tmp;
    if (!bt_parse_step_name(e->d_name, &s, &tmp) || strlen(e->d_name) >= sizeof v->name) continue;
    if (k == cap) {
      cap = cap ? cap * 2 : 16;
      entry_t *nv = realloc(v, cap * sizeof *nv);
      if (!nv) {
        rc = -ENOMEM;
        goto out;
      }
      v = nv;
    }
    entry_t *en = &v[k++];
    en->step = s;
    en->tmp = tmp;
    snprintf(en->name, sizeof en->name, "%s", e->d_name);
    snprintf(p, sizeof p, "%s/%s/%s", root, e->d_name, BT_CKPT_MANIFEST);
    en->committed = !tmp && access(p, F_OK) == 0;
  }
  if (k) qsort(v, k, sizeof *v, cmp_entry);
  *out = v;
  *n = k;
  v = NULL;
out:
  free(v);
  closedir(d);
  return rc;
}

/* Uncommit (manifest first, made durable), then remove the rest. */
static int remove_step(const char *root, const entry_t *en) {
  char dir[PATH_MAX], man[PATH_MAX];
  int rc;
  if (snprintf(dir, sizeof dir, "%s/%s", root, en->name) >= (int)sizeof dir ||
      snprintf(man, sizeof man, "%s/%s", dir, BT_CKPT_MANIFEST) >= (int)sizeof man)
    return -ENAMETOOLONG;
  if (en->committed) {
    if (unlink(man) < 0 && errno != ENOENT) return -errno;
    if ((rc = bt_fsync_dir(dir)) < 0) return rc;
  }
  return bt_rm_rf(dir);
}

int bt_ckpt_retain(const char *root, const bt_ckpt_retention_t *pol, int64_t protect,
                   int *removed) {
  entry_t *v = NULL;
  size_t n = 0;
  int rc, count = 0;
  if (removed) *removed = 0;
  if (!root || !pol || pol->keep_last < 1 || pol->keep_every < 0) return BT_EARG;
  if ((rc = scan(root, &v, &n)) < 0) return rc;
  int64_t newest = -1, verified = -1;
  char dir[PATH_MAX];
  for (size_t i = 0; i < n; i++) {
    if (!v[i].committed) continue;
    if (newest < 0) newest = v[i].step;
    bt_ckpt_step_t st;
    if (snprintf(dir, sizeof dir, "%s/%s", root, v[i].name) >= (int)sizeof dir) continue;
    if (bt_ckpt_step_open(dir, BT_CKPT_CHECK_CHEAP, &st, NULL, NULL) == 0) {
      bt_ckpt_step_close(&st);
      verified = v[i].step;
      break;
    }
  }
  int kept = 0;
  for (size_t i = 0; i < n; i++) {
    const entry_t *en = &v[i];
    int keep;
    if (en->committed) {
      keep = kept < pol->keep_last || (pol->keep_every > 0 && en->step % pol->keep_every == 0) ||
             en->step == verified || en->step == protect;
      kept++;
    } else {
      /* In flight unless older than the newest commit. */
      keep = newest < 0 || en->step >= newest;
    }
    if (keep) continue;
    int r = remove_step(root, en);
    if (r < 0) {
      bt_warn("retention: could not remove %s/%s: %s", root, en->name, bt_strerror(r));
      if (rc == 0) rc = r;
      continue;
    }
    bt_debug("retention: removed %s/%s", root, en->name);
    count++;
  }
  if (count > 0) {
    int r = bt_fsync_dir(root);
    if (r < 0 && rc == 0) rc = r;
  }
  if (removed) *removed = count;
  free(v);
  return rc;
}

int bt_ckpt_remove_debris(const char *root, int *removed) {
  entry_t *v = NULL;
  size_t n = 0;
  int rc, count = 0;
  if (removed) *removed = 0;
  if ((rc = scan(root, &v, &n)) < 0) return rc;
  for (size_t i = 0; i < n; i++) {
    if (v[i].committed) continue;
    int r = remove_step(root, &v[i]);
    if (r < 0) {
      bt_warn("checkpoint: could not remove %s/%s: %s", root, v[i].name, bt_strerror(r));
      if (rc == 0) rc = r;
      continue;
    }
    count++;
  }
  if (count > 0) {
    int r = bt_fsync_dir(root);
    if (r < 0 && rc == 0) rc = r;
  }
  if (removed) *removed = count;
  free(v);
  return rc;
}
