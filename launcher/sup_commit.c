/* sup_commit.c - checkpoints: shard reports are collected per step; when
 * every stage's shard of a step is durable, the commit (the function
 * `baton train` calls, bt_ckpt_commit_lineage) and retention run off the
 * libuv loop on its thread pool (uv_queue_work), one step at a time, so a
 * large checkpoint never stalls heartbeats. Part of the supervisor
 * (sup_internal.h). */
#include "launcher/sup_internal.h"

static void log_checkpoint_event(sup_t *s, int64_t step, double commit_s, int rc, int removed) {
  bt_json_t j;
  if (!sup_event_begin(s, &j, "checkpoint")) return;
  bt_json_kint(&j, "step", step);
  bt_json_kstr(&j, "result", rc ? bt_strerror(rc) : "committed");
  bt_json_knum(&j, "commit_s", commit_s);
  bt_json_kint(&j, "removed", removed);
  bt_json_kint(&j, "preemption", step == s->preempt_at);
  sup_event_end(s, &j);
}

/* A commit on the thread pool: the step's reports, and what came of it. */
typedef struct {
  uv_work_t req;
  sup_t *s;
  pending_ckpt_t p;
  int rc, removed;
  double secs;
} commit_job_t;

static void start_next(sup_t *s);

/* On a pool thread: commit (the same function `baton train` calls: it
 * checks each shard's size and root attributes; NaN was refused by each
 * shard's save) and retention. Touches nothing of the supervisor but its options. */
static void commit_work(uv_work_t *req) {
  commit_job_t *j = req->data;
  const sup_t *s = j->s;
  double t0 = bt_clock_s();
  /* LOCK deleted or replaced under us: the directory's flock still keeps
   * other jobs out; LOCK is written again so that they are told who. */
  int lrc = bt_ckpt_lock_check(s->o->lock);
  if (lrc == 1)
    bt_warn("checkpoint: %s/LOCK was removed or replaced under this job: written again (the directory's own "
            "lock held throughout)",
            s->o->ckpt_dir);
  else if (lrc < 0)
    bt_warn("checkpoint: %s/LOCK was removed or replaced under this job and cannot be written again: %s",
            s->o->ckpt_dir, bt_strerror(lrc));
  j->rc = bt_ckpt_commit_lineage(s->o->ckpt_dir, j->p.step, j->p.r, s->n, &s->o->lineage);
  if (j->rc == 0) {
    bt_ckpt_retention_t pol = {.keep_last = s->o->keep_last > 0 ? s->o->keep_last : 2,
                               .keep_every = s->o->keep_every};
    int rrc = bt_ckpt_retain(s->o->ckpt_dir, &pol, j->p.step, &j->removed);
    if (rrc) bt_warn("checkpoint retention in %s: %s", s->o->ckpt_dir, bt_strerror(rrc));
  }
  j->secs = bt_clock_s() - t0;
}

/* Back on the loop: the result counts, NaN stops the job, a preemption's
 * step stops it cleanly; then the next complete step, if any. */
static void commit_done(uv_work_t *req, int status) {
  commit_job_t *j = req->data;
  sup_t *s = j->s;
  int64_t step = j->p.step;
  int rc = status < 0 ? status : j->rc;
  free(j->p.r);
  free(j->p.have);
  s->committing = 0;
  sup_clear_progress(s);
  if (rc == 0) {
    if (step > s->res->committed_step) s->res->committed_step = step;
    bt_debug("checkpoint step %lld committed (%.2f s)", (long long)step, j->secs);
  } else {
    bt_error("checkpoint step %lld not committed: %s", (long long)step, bt_strerror(rc));
    snprintf(s->res->ckpt_error, sizeof s->res->ckpt_error, "commit of step %lld failed: %s", (long long)step,
             bt_strerror(rc));
  }
  log_checkpoint_event(s, step, j->secs, rc, j->removed);
  free(j);
  if (rc == BT_ENONFINITE) {
    /* Restarting from the previous step would replay the same bits. */
    s->nonfinite = 1;
    sup_begin_stop(s, 1, 0);
  } else if (s->preempt_at && step == s->preempt_at && s->state == JOB_RUNNING) {
    int64_t at = 0;
    for (uint32_t i = 0; i < s->n; i++)
      if (s->w[i].step > at) at = s->w[i].step;
    bt_warn("preemption checkpoint step %lld committed: stopping after step %lld at the earliest (each stage "
            "finishes the step it is in)",
            (long long)step, (long long)(at + 1));
    sup_begin_stop(s, 0, at + 1);
  }
  start_next(s);
}

/* One commit at a time, in step order: `latest` and retention must see
 * the steps in the order they were trained. */
static void start_next(sup_t *s) {
  if (s->committing || s->nready == 0) return;
  commit_job_t *j = calloc(1, sizeof *j);
  if (!j) {
    bt_error("checkpoint step %lld not committed: %s", (long long)s->ready[0].step, bt_strerror(-ENOMEM));
    return;
  }
  j->s = s;
  j->p = s->ready[0];
  memmove(s->ready, s->ready + 1, (s->nready - 1) * sizeof *s->ready);
  s->nready--;
  j->req.data = j;
  s->committing = 1;
  int rc = uv_queue_work(&s->loop, &j->req, commit_work, commit_done);
  if (rc < 0) {
    /* No thread pool: commit here, on the loop. */
    commit_work(&j->req);
    commit_done(&j->req, 0);
  }
}

void sup_add_shard(sup_t *s, const bt_msg_shard_t *m) {
  if (!s->o->ckpt_dir || m->stage >= s->n) return;
  pending_ckpt_t *p = NULL;
  for (size_t i = 0; i < s->nckpt; i++)
    if (s->ckpt[i].step == m->step) p = &s->ckpt[i];
  if (!p) {
    pending_ckpt_t *np = realloc(s->ckpt, (s->nckpt + 1) * sizeof *np);
    if (!np) return;
    s->ckpt = np;
    p = &s->ckpt[s->nckpt];
    memset(p, 0, sizeof *p);
    p->step = m->step;
    p->r = calloc(s->n, sizeof *p->r);
    p->have = calloc(s->n, 1);
    if (!p->r || !p->have) {
      free(p->r);
      free(p->have);
      return;
    }
    s->nckpt++;
  }
  if (p->have[m->stage]) return;
  p->have[m->stage] = 1;
  p->r[m->stage] = *m;
  if (++p->count < s->n) return;
  pending_ckpt_t done = *p;
  *p = s->ckpt[--s->nckpt];
  pending_ckpt_t *nr = realloc(s->ready, (s->nready + 1) * sizeof *nr);
  if (!nr) {
    bt_error("checkpoint step %lld not committed: %s", (long long)done.step, bt_strerror(-ENOMEM));
    free(done.r);
    free(done.have);
    return;
  }
  s->ready = nr;
  s->ready[s->nready++] = done;
  start_next(s);
}
