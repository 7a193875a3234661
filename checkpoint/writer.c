/* writer.c - asynchronous saving: a writer thread per stage.
 *
 * At a checkpoint step the trainer hands its tensors to
 * bt_ckpt_save_async(), which copies them into the writer's snapshot buffer
 * (the only part training waits for) and returns; the thread writes the
 * shard with bt_ckpt_save() and reports through the done callback (the
 * worker sends shard-durable, the in-process trainer commits). A second
 * save waits for the first instead of being skipped: one missing shard
 * makes a step that can never commit. A failed save is a result like any
 * other; the caller goes on training. Not here: commit, retention.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "checkpoint/internal.h"
#include "common/clock.h"
#include "common/log.h"

struct bt_ckpt_writer {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* CLOCK_MONOTONIC: deadlines never follow wall time */
  char root[PATH_MAX];
  bt_ckpt_opts_t opts;
  bt_ckpt_done_fn done;
  void *arg;
  bt_ckpt_write_hook_fn hook;
  void *hook_arg;
  int busy;               /* a snapshot is queued or being written */
  int quit;
  int have_last;
  bt_ckpt_result_t last;
  /* the snapshot */
  bt_ckpt_meta_t meta;    /* owns its strings */
  bt_ckpt_tensor_t *t;
  size_t n, tcap;
  float *buf;
  size_t bufcap;          /* floats */
};

/* Waits on w->cv until pred() or the deadline; BT_ETIMEOUT on timeout.
 * Called with w->mu held. */
static int wait_until(bt_ckpt_writer_t *w, int (*pred)(const bt_ckpt_writer_t *), uint64_t deadline) {
  while (!pred(w)) {
    int64_t ms = bt_ms_left(deadline);
    if (ms <= 0) return BT_ETIMEOUT;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    int e = pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    if (e && e != ETIMEDOUT && e != EINTR) return -e;
  }
  return 0;
}

static int idle(const bt_ckpt_writer_t *w) { return !w->busy; }
static int has_work(const bt_ckpt_writer_t *w) { return w->busy || w->quit; }

static void *writer_main(void *p) {
  bt_ckpt_writer_t *w = p;
  bt_h5_thread_init();
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!has_work(w)) pthread_cond_wait(&w->cv, &w->mu);
    if (!w->busy) break; /* quit with nothing queued */
    pthread_mutex_unlock(&w->mu);
    /* The snapshot is ours while busy: save_async waits for !busy first. */
    bt_ckpt_result_t r = {.step = w->meta.step, .meta = &w->meta, .t = w->t, .n = w->n};
    double t0 = bt_clock_s();
    r.rc = bt_ckpt_save_hooked(w->root, &w->meta, w->t, w->n, &w->opts, w->hook, w->hook_arg,
                               &r.shard);
    r.write_s = bt_clock_s() - t0;
    H5Eclear2(H5E_DEFAULT);
    if (w->done) w->done(w->arg, &r);
    r.meta = NULL; /* the snapshot is reused by the next save */
    r.t = NULL;
    r.n = 0;
    pthread_mutex_lock(&w->mu);
    w->last = r;
    w->have_last = 1;
    w->busy = 0;
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
  /* HDF5 1.10.8 leaks and reports an "infinite loop closing library" when
   * a thread ends with errors on its stack. */
  bt_h5_thread_done();
  return NULL;
}

int bt_ckpt_writer_create(bt_ckpt_writer_t **out, const char *root, const bt_ckpt_opts_t *opts,
                          bt_ckpt_done_fn done, void *arg) {
  bt_ckpt_writer_t *w = calloc(1, sizeof *w);
  pthread_condattr_t ca;
  int rc = 0, mu = 0, cv = 0;
  if (!w) return -ENOMEM;
  if (!root || snprintf(w->root, sizeof w->root, "%s", root) >= (int)sizeof w->root) {
    rc = BT_EARG;
    goto out;
  }
  if (opts) w->opts = *opts;
  w->done = done;
  w->arg = arg;
  if ((rc = -pthread_mutex_init(&w->mu, NULL)) < 0) goto out;
  mu = 1;
  if ((rc = -pthread_condattr_init(&ca)) < 0) goto out;
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  rc = -pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (rc < 0) goto out;
  cv = 1;
  if ((rc = -pthread_create(&w->thread, NULL, writer_main, w)) < 0) goto out;
  *out = w;
  w = NULL;
out:
  if (w) {
    if (cv) pthread_cond_destroy(&w->cv);
    if (mu) pthread_mutex_destroy(&w->mu);
    free(w);
  }
  return rc;
}

void bt_ckpt_writer_set_hook(bt_ckpt_writer_t *w, bt_ckpt_write_hook_fn fn, void *arg) {
  /* Under the lock: the thread reads them after taking it for a save. */
  pthread_mutex_lock(&w->mu);
  w->hook = fn;
  w->hook_arg = arg;
  pthread_mutex_unlock(&w->mu);
}

static char *dup_or_empty(const char *s) { return strdup(s ? s : ""); }

/* Grows the snapshot to n descriptors and `total` floats; called while
 * idle. New pages are touched so that page faults happen now. */
static int reserve(bt_ckpt_writer_t *w, size_t n, size_t total) {
  if (n > w->tcap) {
    bt_ckpt_tensor_t *nt = realloc(w->t, n * sizeof *nt);
    if (!nt) return -ENOMEM;
    w->t = nt;
    w->tcap = n;
  }
  if (total > w->bufcap) {
    float *nb = realloc(w->buf, total * sizeof *nb);
    if (!nb) return -ENOMEM;
    memset(nb + w->bufcap, 0, (total - w->bufcap) * sizeof *nb);
    w->buf = nb;
    w->bufcap = total;
  }
  return 0;
}

int bt_ckpt_writer_reserve(bt_ckpt_writer_t *w, const bt_ckpt_tensor_t *t, size_t n,
                           int64_t timeout_ms) {
  if (!w || (!t && n)) return BT_EARG;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (t[i].ndim < 1 || t[i].ndim > BT_CKPT_MAX_DIMS) return BT_EARG;
    total += bt_ckpt_numel(&t[i]);
  }
  pthread_mutex_lock(&w->mu);
  int rc = wait_until(w, idle, bt_deadline_ms(timeout_ms));
  if (rc == 0) rc = reserve(w, n, total);
  pthread_mutex_unlock(&w->mu);
  return rc;
}

/* Copies meta and tensors (with fill() when given) into the snapshot;
 * called while idle. */
static int snapshot(bt_ckpt_writer_t *w, const bt_ckpt_meta_t *meta, const bt_ckpt_tensor_t *t,
                    size_t n, bt_ckpt_fill_fn fill, void *arg) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += bt_ckpt_numel(&t[i]);
  int rc = reserve(w, n, total);
  if (rc < 0) return rc;
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    size_t k = bt_ckpt_numel(&t[i]);
    w->t[i] = t[i];
    w->t[i].data = w->buf + off;
    if (fill) {
      if ((rc = fill(arg, i, w->t[i].data)) < 0) return rc;
    } else if (t[i].data) {
      memcpy(w->t[i].data, t[i].data, k * sizeof(float));
    } else {
      w->t[i].data = NULL; /* bt_ckpt_save reports the bad description */
    }
    off += k;
  }
  char *cfg = dup_or_empty(meta->model_config), *run = dup_or_empty(meta->run_settings);
  if (!cfg || !run) {
    free(cfg);
    free(run);
    return -ENOMEM;
  }
  bt_ckpt_meta_free(&w->meta);
  w->meta = *meta;
  w->meta.model_config = cfg;
  w->meta.run_settings = run;
  w->n = n;
  return 0;
}

int bt_ckpt_save_async(bt_ckpt_writer_t *w, const bt_ckpt_meta_t *meta,
                       const bt_ckpt_tensor_t *t, size_t n, int64_t timeout_ms) {
  return bt_ckpt_save_async_fill(w, meta, t, n, NULL, NULL, timeout_ms);
}

int bt_ckpt_save_async_fill(bt_ckpt_writer_t *w, const bt_ckpt_meta_t *meta,
                            const bt_ckpt_tensor_t *t, size_t n, bt_ckpt_fill_fn fill,
                            void *arg, int64_t timeout_ms) {
  if (!w || !meta || (!t && n)) return BT_EARG;
  for (size_t i = 0; i < n; i++)
    if (t[i].ndim < 1 || t[i].ndim > BT_CKPT_MAX_DIMS) return BT_EARG;
  pthread_mutex_lock(&w->mu);
  int rc = wait_until(w, idle, bt_deadline_ms(timeout_ms));
  if (rc == 0) rc = snapshot(w, meta, t, n, fill, arg);
  if (rc == 0) {
    w->busy = 1;
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
  return rc;
}

int bt_ckpt_writer_wait(bt_ckpt_writer_t *w, int64_t timeout_ms, bt_ckpt_result_t *last) {
  pthread_mutex_lock(&w->mu);
  int rc = wait_until(w, idle, bt_deadline_ms(timeout_ms));
  if (rc == 0 && last) {
    if (w->have_last) {
      *last = w->last;
    } else {
      memset(last, 0, sizeof *last);
      last->rc = BT_EARG;
    }
  }
  pthread_mutex_unlock(&w->mu);
  return rc;
}

void bt_ckpt_writer_destroy(bt_ckpt_writer_t *w) {
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  w->quit = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  /* The thread finishes the save in flight first: abandoning it would leave
   * a half-written temp file and a stage that never reports. */
  pthread_join(w->thread, NULL);
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
  bt_ckpt_meta_free(&w->meta);
  free(w->t);
  free(w->buf);
  free(w);
}
