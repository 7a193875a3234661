/* commit.c - makes a step real: bt_ckpt_commit().
 *
 * One function for both callers: `baton train` calls it in-process after
 * its own save, the supervisor calls it with the reports its workers send
 * (bt_msg_shard_t). Order of durable effects, each fsync'ed before the next
 * so that a crash anywhere leaves either the previous state or the new one:
 *
 *   shards durable in step-S.tmp (done by each stage's save)
 *   -> MANIFEST.json (temp, fsync, rename, fsync of step-S.tmp)
 *   -> rename step-S.tmp to step-S, fsync of ROOT
 *   -> `latest` (temp, fsync, rename, fsync of ROOT)
 *
 * Restore only considers directories named exactly step-NNNNNNNN that hold
 * a manifest, so a crash before the directory rename leaves nothing that
 * restore would load, and a crash after it leaves a complete step even if
 * `latest` still names the previous one.
 *
 * Commit reads no tensor: each shard's save refused NaN and Inf in the
 * snapshot it wrote (shard.c) and reported the file's CRC, which goes into
 * the manifest; a shard changed after its save (another writer, a bit
 * flip) no longer matches that CRC, so restore and `baton ckpt verify`
 * reject the step and fall back to the one before. Here only each shard's
 * size and root attributes are checked; bt_ckpt_commit_saved() (a
 * one-stage job committing on its writer thread, `baton train`) takes the
 * attributes and layers from the snapshot its save just wrote instead of
 * reopening the shard, and checks the size only. Not here: saving shards,
 * choosing steps, retention.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/internal.h"
#include "common/log.h"

static int str_eq(const char *a, const char *b) { return !strcmp(a ? a : "", b ? b : ""); }

/* The first stage's root attributes are the reference the others must
 * match: one job, one configuration, one step. */
static int same_job(const bt_ckpt_meta_t *ref, const bt_ckpt_meta_t *m, const char *file) {
  const char *what = NULL;
  if (m->chunks != ref->chunks) what = "chunks";
  else if (m->layer_count != ref->layer_count) what = "layer_count";
  else if (m->seed != ref->seed) what = "seed";
  else if (m->adam_t != ref->adam_t) what = "adam_t";
  else if (!str_eq(m->model_config, ref->model_config)) what = "model_config";
  else if (!str_eq(m->run_settings, ref->run_settings)) what = "run_settings";
  if (!what) return 0;
  bt_error("commit: shard %s differs from the other shards in %s", file, what);
  return BT_ECORRUPT;
}

static int cmp_info(const void *a, const void *b) {
  const bt_ckpt_shard_info_t *x = a, *y = b;
  return x->stage < y->stage ? -1 : x->stage > y->stage;
}

/* Removes what is not a reported shard (a torn shard temp of a killed
 * writer, a manifest temp of an earlier attempt): the committed step holds
 * exactly what its manifest lists. */
static int remove_strays(const char *dir, const bt_ckpt_manifest_t *m) {
  DIR *d = opendir(dir);
  if (!d) return -errno;
  int rc = 0;
  struct dirent *e;
  char p[PATH_MAX];
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    int keep = 0;
    for (uint32_t i = 0; i < m->nshards && !keep; i++) keep = !strcmp(e->d_name, m->shards[i].file);
    if (keep) continue;
    if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
    bt_debug("commit: removing stray %s", p);
    int r = bt_rm_rf(p);
    if (r < 0 && rc == 0) rc = r;
  }
  closedir(d);
  return rc;
}

/* Temp, fsync, rename, fsync of the directory. Written in two halves so
 * the crash test can stop with a torn manifest temp on disk. */
static int write_manifest(const char *dir, const char *text, size_t len) {
  char tmp[PATH_MAX], path[PATH_MAX];
  int fd = -1, rc = 0;
  if (snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, BT_CKPT_MANIFEST) >= (int)sizeof tmp ||
      snprintf(path, sizeof path, "%s/%s", dir, BT_CKPT_MANIFEST) >= (int)sizeof path)
    return -ENAMETOOLONG;
  do fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -errno;
  size_t half = len / 2;
  if ((rc = bt_write_all(fd, text, half)) < 0) goto out;
  if (getenv("BATON_CKPT_TEST_STOP")) {
    fsync(fd);
    bt_ckpt_test_stop("manifest-partial", -1);
  }
  if ((rc = bt_write_all(fd, text + half, len - half)) < 0) goto out;
  if (fsync(fd) < 0) {
    rc = -errno;
    goto out;
  }
  int c = close(fd);
  fd = -1;
  if (c < 0) {
    rc = -errno;
    goto out;
  }
  if (rename(tmp, path) < 0) {
    rc = -errno;
    goto out;
  }
  rc = bt_fsync_dir(dir);
out:
  if (fd >= 0) close(fd);
  if (rc < 0) unlink(tmp);
  return rc;
}

/* Puts step-S.tmp in place as step-S. When step-S already exists (a run
 * resumed from an older step and reached S again) the two are exchanged
 * atomically, so at no moment is there no step-S, and the old one goes. */
static int move_into_place(const char *tmpdir, const char *final) {
  if (rename(tmpdir, final) == 0) return 0;
  if (errno != ENOTEMPTY && errno != EEXIST) return -errno;
  if (renameat2(AT_FDCWD, tmpdir, AT_FDCWD, final, RENAME_EXCHANGE) < 0) return -errno;
  bt_warn("commit: replaced the existing %s", final);
  return bt_rm_rf(tmpdir);
}

int bt_ckpt_commit(const char *root, int64_t step, const bt_msg_shard_t *shards, size_t n) {
  return bt_ckpt_commit_lineage(root, step, shards, n, NULL);
}

/* What a one-stage caller's save already knows about its shard: with it
 * the commit need not reopen the file it just wrote. */
typedef struct {
  const bt_ckpt_meta_t *meta;
  const uint32_t *layers;
  size_t nl;
} known_t;

static int commit(const char *root, int64_t step, const bt_msg_shard_t *shards, size_t n,
                  const bt_ckpt_lineage_t *lin, const known_t *known);

int bt_ckpt_commit_lineage(const char *root, int64_t step, const bt_msg_shard_t *shards, size_t n,
                           const bt_ckpt_lineage_t *lin) {
  return commit(root, step, shards, n, lin, NULL);
}

int bt_ckpt_commit_saved(const char *root, const bt_ckpt_result_t *r, const bt_ckpt_lineage_t *lin) {
  if (!r || r->rc || !r->meta || (!r->t && r->n) || r->meta->stages != 1 || r->meta->stage != 0 ||
      r->meta->step != r->step)
    return BT_EARG;
  uint32_t lc = r->meta->layer_count;
  unsigned char *seen = calloc(lc ? lc : 1, 1);
  uint32_t *layers = malloc((lc ? lc : 1) * sizeof *layers);
  int rc = 0;
  if (!seen || !layers) {
    rc = -ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < r->n; i++) {
    if (r->t[i].layer >= lc) {
      rc = BT_EARG;
      goto out;
    }
    seen[r->t[i].layer] = 1;
  }
  size_t nl = 0;
  for (uint32_t l = 0; l < lc; l++)
    if (seen[l]) layers[nl++] = l;
  known_t k = {r->meta, layers, nl};
  rc = commit(root, r->step, &r->shard, 1, lin, &k);
out:
  free(seen);
  free(layers);
  return rc;
}

/* The manifest's shard list from the stages' reports: each names this
 * step and a plain file name, and together they name stages 0..n-1 once. */
static int shards_from_reports(int64_t step, const bt_msg_shard_t *shards, size_t n, bt_ckpt_manifest_t *m) {
  m->nshards = (uint32_t)n;
  if (!(m->shards = calloc(n, sizeof *m->shards))) return -ENOMEM;
  for (size_t i = 0; i < n; i++) {
    const bt_msg_shard_t *r = &shards[i];
    bt_ckpt_shard_info_t *info = &m->shards[i];
    if (r->step != step || !r->file[0] || memchr(r->file, '/', strnlen(r->file, sizeof r->file)) ||
        strnlen(r->file, sizeof r->file) == sizeof r->file || !strcmp(r->file, BT_CKPT_MANIFEST)) {
      bt_error("commit: step %lld: bad report from stage %u (step %lld, file '%.64s')",
               (long long)step, r->stage, (long long)r->step, r->file);
      return BT_EARG;
    }
    info->stage = r->stage;
    snprintf(info->file, sizeof info->file, "%s", r->file);
    info->size = r->size;
    info->crc = r->crc;
  }
  qsort(m->shards, n, sizeof *m->shards, cmp_info);
  for (size_t i = 0; i < n; i++)
    if (m->shards[i].stage != i) {
      bt_error("commit: step %lld: %zu reports do not name stages 0..%zu exactly once",
               (long long)step, n, n - 1);
      return BT_EARG;
    }
  return 0;
}

/* The durable steps of a commit once the shards are checked: strays
 * out, the manifest in, step-S.tmp renamed to step-S, then `latest`. */
static int publish(const char *root, const char *tmpdir, const char *final, int64_t step, size_t n,
                   const bt_ckpt_manifest_t *m) {
  char *text = NULL, p[PATH_MAX], latest[64];
  size_t tlen = 0;
  int rc;
  if ((rc = remove_strays(tmpdir, m)) < 0) return rc;
  if ((rc = bt_ckpt_manifest_format(m, &text, &tlen)) < 0) return rc;
  rc = write_manifest(tmpdir, text, tlen);
  free(text);
  if (rc < 0) return rc;
  bt_ckpt_test_stop("manifest-renamed", -1);
  if ((rc = move_into_place(tmpdir, final)) < 0) return rc;
  if ((rc = bt_fsync_dir(root)) < 0) return rc;
  bt_ckpt_test_stop("dir-renamed", -1);
  snprintf(latest, sizeof latest, "step-%08lld\n", (long long)step);
  if (snprintf(p, sizeof p, "%s/latest", root) >= (int)sizeof p) return -ENAMETOOLONG;
  /* The step is committed now (its directory holds the manifest, and that
   * is all restore looks for): `latest` is a convenience for people and
   * scripts, and failing to move it is a warning, not a failed commit. */
  int lrc = bt_write_file_durable(p, latest, strlen(latest));
  if (lrc < 0)
    bt_warn("checkpoint: step %lld is committed, but %s could not name it: %s", (long long)step, p,
            bt_strerror(lrc));
  bt_info("checkpoint: committed step %lld (%zu shard%s) in %s", (long long)step, n,
          n == 1 ? "" : "s", final);
  return 0;
}

static int commit(const char *root, int64_t step, const bt_msg_shard_t *shards, size_t n,
                  const bt_ckpt_lineage_t *lin, const known_t *known) {
  char tmpdir[PATH_MAX], final[PATH_MAX], p[PATH_MAX];
  bt_ckpt_manifest_t m;
  bt_ckpt_shard_t *sh = NULL;
  uint32_t *owner = NULL;
  int rc = 0;
  memset(&m, 0, sizeof m);
  bt_h5_thread_init();
  if (!root || step < 0 || !shards || n == 0 || n > BT_MAX_STAGES) return BT_EARG;
  if ((rc = bt_ckpt_step_path(root, step, 1, tmpdir, sizeof tmpdir)) < 0 ||
      (rc = bt_ckpt_step_path(root, step, 0, final, sizeof final)) < 0)
    return rc;
  m.version = BT_CKPT_FORMAT_VERSION;
  m.lineage.parent_step = -1;
  if (lin) {
    if ((lin->job[0] && !bt_ckpt_job_valid(lin->job)) || (lin->parent_job[0] && !bt_ckpt_job_valid(lin->parent_job)))
      return BT_EARG;
    m.lineage = *lin;
  }
  if ((rc = shards_from_reports(step, shards, n, &m)) < 0) goto out;
  for (size_t i = 0; i < n; i++) {
    bt_ckpt_shard_info_t *info = &m.shards[i];
    struct stat st;
    if (snprintf(p, sizeof p, "%s/%s", tmpdir, info->file) >= (int)sizeof p) {
      rc = -ENAMETOOLONG;
      goto out;
    }
    if (stat(p, &st) < 0) {
      rc = -errno;
      bt_error("commit: shard %s: %s", p, bt_strerror(rc));
      goto out;
    }
    if ((uint64_t)st.st_size != info->size) {
      bt_error("commit: shard %s is %lld bytes, its stage reported %llu", p, (long long)st.st_size,
               (unsigned long long)info->size);
      rc = BT_ECORRUPT;
      goto out;
    }
    const bt_ckpt_meta_t *sm;
    const uint32_t *layers;
    size_t nl;
    if (known) {
      sm = known->meta;
      layers = known->layers;
      nl = known->nl;
    } else {
      if ((rc = bt_ckpt_shard_open(p, &sh)) < 0) {
        bt_error("commit: shard %s: %s", p, bt_strerror(rc));
        goto out;
      }
      sm = bt_ckpt_shard_meta(sh);
      layers = bt_ckpt_shard_layers(sh, &nl);
    }
    if (sm->step != step || sm->stage != info->stage || sm->stages != n) {
      bt_error("commit: shard %s holds step %lld stage %u of %u, expected step %lld stage %u of %zu",
               p, (long long)sm->step, sm->stage, sm->stages, (long long)step, info->stage, n);
      rc = BT_ECORRUPT;
      goto out;
    }
    if (i == 0) {
      m.meta = *sm;
      m.meta.stage = 0;
      m.meta.model_config = strdup(sm->model_config);
      m.meta.run_settings = strdup(sm->run_settings);
      owner = malloc(sm->layer_count * sizeof *owner);
      m.layer_shard = malloc(sm->layer_count * sizeof *m.layer_shard);
      if (!m.meta.model_config || !m.meta.run_settings || !owner || !m.layer_shard) {
        rc = -ENOMEM;
        goto out;
      }
      for (uint32_t l = 0; l < sm->layer_count; l++) owner[l] = UINT32_MAX;
    } else if ((rc = same_job(&m.meta, sm, info->file)) < 0) {
      goto out;
    }
    for (size_t k = 0; k < nl; k++) {
      if (owner[layers[k]] != UINT32_MAX) {
        bt_error("commit: step %lld: layer %u is in both %s and %s", (long long)step, layers[k],
                 m.shards[owner[layers[k]]].file, info->file);
        rc = BT_ECORRUPT;
        goto out;
      }
      owner[layers[k]] = (uint32_t)i;
    }
    if (sh) bt_ckpt_shard_close(sh);
    sh = NULL;
  }
  for (uint32_t l = 0; l < m.meta.layer_count; l++) {
    if (owner[l] == UINT32_MAX) {
      bt_error("commit: step %lld: layer %u is in no shard", (long long)step, l);
      rc = BT_ECORRUPT;
      goto out;
    }
    m.layer_shard[l] = owner[l];
  }
  rc = publish(root, tmpdir, final, step, n, &m);
out:
  if (rc < 0) bt_error("commit of step %lld failed: %s", (long long)step, bt_strerror(rc));
  if (sh) bt_ckpt_shard_close(sh);
  free(owner);
  bt_ckpt_manifest_free(&m);
  return rc;
}
