/* lineage.c - which committed steps belong to a job.
 *
 * A checkpoint directory can hold steps that this job never produced: the
 * steps of the run being rolled back by `--resume PATH`, or of another job
 * that used the same directory. Restoring the newest step there loads state
 * from another timeline, silently (the hash differs, the summary says 0
 * steps replayed). So every manifest records the job that committed the step
 * and the step its incarnation restored from (ckpt.h, bt_ckpt_lineage_t),
 * and a job restores only its own steps (bt_ckpt_job_pick) or, before its
 * first commit, the step it started from, which its launcher remembers.
 *
 * At start, a job resuming from a step refuses a directory holding steps
 * off that step's lineage (bt_ckpt_lineage_conflicts), or moves them aside
 * when asked (bt_ckpt_move_aside): they would otherwise be replaced by this
 * job's commits or deleted by its retention, and a later auto resume would
 * take the newest of them.
 *
 * Not here: deciding that a configuration matches (common/config.c), the
 * policy of what a command does with a conflict (cmd_run.c, cmd_train.c).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint/internal.h"
#include "common/log.h"

_Static_assert(BT_CKPT_JOB_LEN == 32, "a job id is one bt_random_id");

void bt_ckpt_job_new(char out[BT_CKPT_JOB_LEN + 1]) { bt_random_id(out); }

int bt_ckpt_job_valid(const char *s) {
  if (!s || strlen(s) != BT_CKPT_JOB_LEN) return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
  return 1;
}

/* The lineage recorded in ROOT/step-S's manifest (cheap: the manifest
 * only). -ENOENT and friends when it cannot be read. */
static int read_lineage(const char *root, int64_t step, bt_ckpt_lineage_t *l) {
  char dir[PATH_MAX], path[PATH_MAX + 32], err[256];
  int rc = bt_ckpt_step_path(root, step, 0, dir, sizeof dir);
  if (rc < 0) return rc;
  snprintf(path, sizeof path, "%s/%s", dir, BT_CKPT_MANIFEST);
  bt_ckpt_manifest_t m;
  if ((rc = bt_ckpt_manifest_read(path, &m, err, sizeof err)) < 0) return rc;
  *l = m.lineage;
  bt_ckpt_manifest_free(&m);
  return 0;
}

static void warn_problem(void *arg, const char *line) {
  (void)arg; /* the line names the step itself */
  bt_warn("checkpoint: %s", line);
}

int bt_ckpt_job_pick(const char *root, const char *job, int64_t before, bt_ckpt_step_t *st) {
  if (!job || (job[0] && !bt_ckpt_job_valid(job))) return BT_EARG;
  int64_t *steps = NULL;
  size_t ns = 0;
  char dir[PATH_MAX];
  int rc = bt_ckpt_list_steps(root, &steps, &ns);
  if (rc < 0) return rc;
  rc = -ENOENT;
  for (size_t i = 0; i < ns; i++) {
    bt_ckpt_lineage_t l;
    if (steps[i] >= before || read_lineage(root, steps[i], &l) < 0 || strcmp(l.job, job)) continue;
    if ((rc = bt_ckpt_step_path(root, steps[i], 0, dir, sizeof dir)) < 0) break;
    memset(st, 0, sizeof *st);
    if ((rc = bt_ckpt_step_open(dir, BT_CKPT_CHECK_CRC, st, warn_problem, NULL)) == 0) break;
    bt_warn("checkpoint: skipping %s of this job (%s); trying its previous step", dir, bt_strerror(rc));
    rc = -ENOENT;
  }
  free(steps);
  return rc;
}

/* The (job, newest step) pairs of from's lineage: from itself, then each
 * parent, followed through ROOT's manifests as far as they are there. */
#define MAX_ANCESTORS 64

typedef struct {
  char job[BT_CKPT_JOB_LEN + 1];
  int64_t step;
} link_t;

static size_t ancestors(const char *root, const bt_ckpt_step_t *from, link_t *chain) {
  size_t n = 0;
  snprintf(chain[n].job, sizeof chain[n].job, "%s", from->man.lineage.job);
  chain[n++].step = from->step;
  bt_ckpt_lineage_t l = from->man.lineage;
  while (l.parent_step >= 0 && n < MAX_ANCESTORS) {
    snprintf(chain[n].job, sizeof chain[n].job, "%s", l.parent_job);
    chain[n++].step = l.parent_step;
    bt_ckpt_lineage_t p;
    if (read_lineage(root, l.parent_step, &p) < 0 || strcmp(p.job, l.parent_job)) break;
    l = p;
  }
  return n;
}

int bt_ckpt_lineage_conflicts(const char *root, const bt_ckpt_step_t *from, int64_t **steps, size_t *n) {
  int64_t *all = NULL;
  size_t na = 0, k = 0;
  *steps = NULL;
  *n = 0;
  int rc = bt_ckpt_list_steps(root, &all, &na);
  if (rc == -ENOENT) return 0;
  if (rc < 0) return rc;
  link_t chain[MAX_ANCESTORS];
  size_t nc = ancestors(root, from, chain);
  for (size_t i = 0; i < na; i++) {
    int ok = 0;
    bt_ckpt_lineage_t l;
    if (all[i] <= from->step && read_lineage(root, all[i], &l) == 0)
      for (size_t c = 0; c < nc && !ok; c++) ok = !strcmp(l.job, chain[c].job) && all[i] <= chain[c].step;
    if (!ok) all[k++] = all[i];
  }
  if (k) *steps = all;
  else free(all);
  *n = k;
  return 0;
}

/* ROOT/latest names the newest committed step left, or goes. */
static int fix_latest(const char *root) {
  char p[PATH_MAX], name[64];
  int64_t *steps = NULL;
  size_t ns = 0;
  int rc = bt_ckpt_list_steps(root, &steps, &ns);
  if (rc < 0) return rc;
  if (snprintf(p, sizeof p, "%s/latest", root) >= (int)sizeof p) rc = -ENAMETOOLONG;
  else if (ns == 0) rc = unlink(p) < 0 && errno != ENOENT ? -errno : bt_fsync_dir(root);
  else {
    snprintf(name, sizeof name, "step-%08lld\n", (long long)steps[0]);
    rc = bt_write_file_durable(p, name, strlen(name));
  }
  free(steps);
  return rc;
}

int bt_ckpt_move_aside(const char *root, const int64_t *steps, size_t n, char *aside, size_t asidelen) {
  char stamp[32], from[PATH_MAX], to[PATH_MAX + 32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
  int rc = 0;
  /* A second move within the same second gets its own folder. */
  for (int i = 1;; i++) {
    int w = i == 1 ? snprintf(aside, asidelen, "%s/aside-%s", root, stamp)
                   : snprintf(aside, asidelen, "%s/aside-%s-%d", root, stamp, i);
    if (w < 0 || (size_t)w >= asidelen) return -ENAMETOOLONG;
    if (mkdir(aside, 0755) == 0) break;
    if (errno != EEXIST || i == 100) return -errno;
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    if ((rc = bt_ckpt_step_path(root, steps[i], 0, from, sizeof from)) < 0) break;
    snprintf(to, sizeof to, "%s/%s", aside, strrchr(from, '/') + 1);
    if (rename(from, to) < 0) rc = -errno;
    else bt_info("checkpoint: moved %s to %s", from, to);
  }
  if (rc == 0) rc = bt_fsync_dir(aside);
  if (rc == 0) rc = bt_fsync_dir(root);
  int lrc = fix_latest(root);
  return rc ? rc : lrc;
}

int bt_ckpt_resume_settle(const char *root, const bt_ckpt_step_t *from, const char *path, int move_aside,
                          char *msg, size_t msglen) {
  int64_t *steps = NULL;
  size_t n = 0;
  msg[0] = 0;
  int rc = bt_ckpt_lineage_conflicts(root, from, &steps, &n);
  if (rc) {
    snprintf(msg, msglen, "--ckpt-dir %s: %s", root, bt_strerror(rc));
    return rc;
  }
  if (n == 0) return 0;
  char list[512] = "";
  size_t len = 0;
  for (size_t i = 0; i < n && len < sizeof list - 64; i++)
    len += (size_t)snprintf(list + len, sizeof list - len, "%sstep-%08lld", i ? ", " : "", (long long)steps[i]);
  if (len >= sizeof list - 64) snprintf(list + len, sizeof list - len, ", ...");
  if (move_aside) {
    char aside[PATH_MAX];
    if ((rc = bt_ckpt_move_aside(root, steps, n, aside, sizeof aside)))
      snprintf(msg, msglen, "--newer-steps move-aside: %s", bt_strerror(rc));
    else
      snprintf(msg, msglen, "moved %s of --ckpt-dir %s (not on the lineage of --resume %s) into %s", list, root,
               path, aside);
  } else {
    snprintf(msg, msglen,
             "--ckpt-dir %s already holds step %lld: committed steps newer than --resume %s (step %lld) or of "
             "another lineage (%s); use another --ckpt-dir, leave out --resume to continue the newest step "
             "there, or add --newer-steps move-aside to move them into %s/aside-<UTC time>/ (nothing is "
             "deleted)",
             root, (long long)steps[0], path, (long long)from->step, list, root);
    rc = 1;
  }
  free(steps);
  return rc;
}
