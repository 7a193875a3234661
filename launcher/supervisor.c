/* supervisor.c - see supervisor.h.
 *
 * Handle ownership: every worker has a process handle and three pipes
 * (stdout, stderr, control); the job has a tick timer (timeouts), a grace
 * timer, a drain timer and three signal handles. Each is closed exactly once
 * through close_handle(), and uv_run() returns only when the last close
 * callback ran, so the supervisor exits with every child reaped and every
 * handle closed.
 */
#include "launcher/sup_internal.h"

#include <signal.h>

#define SAME(a, b) ((int)(a) == (int)(b))
_Static_assert(SAME(BT_SUP_EXIT_OK, BT_EXIT_OK) && SAME(BT_SUP_EXIT_FAILED, BT_EXIT_FAILED) &&
                   SAME(BT_SUP_EXIT_USAGE, BT_EXIT_USAGE),
               "supervisor.h and common/exitcodes.h disagree");
_Static_assert(SAME(BT_SUP_WEXIT_DONE, BT_WEXIT_DONE) && SAME(BT_SUP_WEXIT_ERROR, BT_WEXIT_ERROR) &&
                   SAME(BT_SUP_WEXIT_USAGE, BT_WEXIT_USAGE) && SAME(BT_SUP_WEXIT_RETRY, BT_WEXIT_RETRY) &&
                   SAME(BT_SUP_WEXIT_FATAL, BT_WEXIT_FATAL) && SAME(BT_SUP_WEXIT_STOPPED, BT_WEXIT_STOPPED) &&
                   SAME(BT_SUP_WEXIT_ORPHAN, BT_WEXIT_ORPHAN) && SAME(BT_SUP_WEXIT_NONFINITE, BT_WEXIT_NONFINITE),
               "supervisor.h and common/exitcodes.h disagree on worker codes");
#undef SAME

extern char **environ;

uint64_t sup_now_ms(sup_t *s) { return uv_now(&s->loop); }

/* Between two incarnations of a job (the restart decision, the restore
 * point, the next spawn) no loop watches the signals, and libuv gives them
 * back to their default action when the last watcher stops: a SIGTERM
 * there would kill the supervisor without a word. So when the watchers
 * stop, a plain handler holds the first job signal that comes, and the
 * next incarnation raises it again once its own watchers are in place. */
static volatile sig_atomic_t g_held_signal;

static void hold_signal(int sig) {
  if (!g_held_signal) g_held_signal = sig;
}

static void hold_job_signals(void) {
  static const int sigs[] = {SIGINT, SIGTERM, SIGUSR1, SIGHUP};
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = hold_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
}

static void on_closed_flag(uv_handle_t *h) {
  int *flag = h->data;
  *flag = 0;
}

/* Closes h once; *flag (the "still open" mark) drops in the close callback. */
void sup_close_handle(uv_handle_t *h, int *flag) {
  if (!*flag || uv_is_closing(h)) return;
  h->data = flag;
  uv_close(h, on_closed_flag);
}

/* SIGKILL to the worker's process group (it is a session leader, so its
 * group id is its pid) and to the pid itself: right after uv_spawn the child
 * may not have reached setsid() yet, and then the group does not exist. */
static void kill_worker(worker_t *w) {
  if (w->remote && w->state != W_EXITED) {
    w->killed_by_us = 1;
    sup_remote_kill(w);
    return;
  }
  if (w->state == W_EXITED || w->pid <= 0) return;
  w->killed_by_us = 1;
  kill(-w->pid, SIGKILL);
  kill(w->pid, SIGKILL);
}

void sup_kill_all(sup_t *s) {
  for (uint32_t i = 0; i < s->n; i++) kill_worker(&s->w[i]);
}

static void on_ctl_written(uv_write_t *req, int status) { free(req); }

static void ctl_send(worker_t *w, const bt_buf_t *b) {
  if (w->remote) {
    if (w->state != W_EXITED && !b->err) sup_remote_ctl(w, b);
    return;
  }
  if (!w->ctl_open || uv_is_closing((uv_handle_t *)&w->ctl) || b->err) return;
  uv_write_t *req = malloc(sizeof *req + b->len);
  if (!req) return;
  uint8_t *copy = (uint8_t *)(req + 1);
  memcpy(copy, b->data, b->len);
  uv_buf_t buf = uv_buf_init((char *)copy, (unsigned)b->len);
  if (uv_write(req, (uv_stream_t *)&w->ctl, &buf, 1, on_ctl_written) < 0) free(req);
}

void sup_send_step_msg(worker_t *w, uint16_t type, int64_t step) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_step_t m = {.step = step};
  bt_msg_encode_step(&b, type, &m);
  ctl_send(w, &b);
  bt_buf_free(&b);
}

static void send_empty(worker_t *w, uint16_t type) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_encode_empty(&b, type);
  ctl_send(w, &b);
  bt_buf_free(&b);
}

static void on_grace(uv_timer_t *t) {
  sup_t *s = t->data;
  bt_warn("grace period over: killing the remaining workers");
  sup_log_kill_event(s, "grace period over");
  sup_kill_all(s);
}

/* Enters STOPPING: workers that can still act get STOP (finish step `stop_at`
 * and exit) or ABORT (exit now); whatever is left after the grace period
 * gets SIGKILL. A frozen worker is killed by the caller first: a grace
 * period is only for workers that can still act on "stop". */
void sup_begin_stop(sup_t *s, int abort_now, int64_t stop_at) {
  if (s->state == JOB_STOPPING || s->state == JOB_DONE) return;
  s->state = JOB_STOPPING;
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    if (w->state == W_EXITED) continue;
    if (abort_now) send_empty(w, BT_MSG_ABORT);
    else sup_send_step_msg(w, BT_MSG_STOP, stop_at);
  }
  uv_timer_start(&s->grace, on_grace, (uint64_t)s->dl.grace_ms, 0);
}

/* Records a failure of w; the first one stops the job. */
static void worker_failed(worker_t *w, fail_rank_t rank, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void worker_failed(worker_t *w, fail_rank_t rank, const char *fmt, ...) {
  sup_t *s = w->sup;
  if (rank > w->fail) {
    w->fail = rank;
    w->fail_ms = sup_now_ms(s);
    if (s->res->detect_s == 0) {
      s->res->detect_s = bt_clock_s() - s->epoch_s;
      uint64_t since = w->last_progress_ms ? w->last_progress_ms : s->start_ms;
      s->res->detect_latency_s = (double)(w->fail_ms - since) / 1000.0;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->fail_reason, sizeof w->fail_reason, fmt, ap);
    va_end(ap);
    static const char *const kinds[] = {"none", "retryable", "exit", "crash"};
    bt_json_t j;
    if (sup_event_begin(s, &j, "failure")) {
      bt_json_kint(&j, "stage", w->stage);
      bt_json_kstr(&j, "kind", kinds[rank]);
      bt_json_kstr(&j, "reason", w->fail_reason);
      bt_json_kint(&j, "step", w->step);
      sup_event_end(s, &j);
    }
  }
  sup_clear_progress(s);
  bt_error("stage %u: %s", w->stage, w->fail_reason);
  sup_begin_stop(s, 1, 0);
}

static void send_start(sup_t *s) {
  bt_msg_start_t *m = calloc(1, sizeof *m);
  if (!m) {
    s->internal_error = -ENOMEM;
    sup_kill_all(s);
    sup_begin_stop(s, 1, 0);
    return;
  }
  m->nstages = s->n;
  m->first_step = s->o->first_step;
  m->last_step = s->o->last_step;
  m->restore_step = s->o->restore_step;
  /* Without a checkpoint directory nothing is saved; with one the last
   * step always is (DESIGN §6). */
  m->ckpt_every = s->o->ckpt_dir ? s->o->ckpt_every : 0;
  m->ckpt_last = s->o->ckpt_dir ? 1 : 0;
  for (uint32_t i = 0; i < s->n; i++) {
    snprintf(m->addrs[i], BT_ADDR_MAX, "%s", s->w[i].addr);
    snprintf(m->gpus[i], BT_GPU_NAME_MAX, "%s", s->w[i].gpu);
  }
  /* NCCL's unique id comes from stage 0; everyone joins with it. */
  memcpy(m->nccl_id, s->w[0].nccl_id, sizeof m->nccl_id);
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_encode_start(&b, m);
  uint64_t now = sup_now_ms(s);
  for (uint32_t i = 0; i < s->n; i++) {
    s->w[i].state = W_RUNNING;
    s->w[i].last_progress_ms = now;
    ctl_send(&s->w[i], &b);
  }
  bt_buf_free(&b);
  free(m);
  s->state = JOB_RUNNING;
  s->started_ms = now;
  s->res->ready_s = bt_clock_s() - s->epoch_s;
  bt_json_t j;
  if (sup_event_begin(s, &j, "ready")) {
    bt_json_kint(&j, "stages", s->n);
    bt_json_kint(&j, "first_step", s->o->first_step);
    bt_json_kint(&j, "last_step", s->o->last_step);
    bt_json_kint(&j, "restore_step", s->o->restore_step);
    sup_event_end(s, &j);
  }
  bt_info("all %u stages ready after %.2f s: training", s->n, (double)(now - s->start_ms) / 1000.0);
}

static void handle_msg(worker_t *w, const bt_frame_t *f) {
  sup_t *s = w->sup;
  int rc = 0;
  w->last_beat_ms = sup_now_ms(s); /* any frame proves the worker alive */
  switch (f->type) {
  case BT_MSG_HELLO: {
    bt_msg_hello_t m;
    if ((rc = bt_msg_decode_hello(f, &m)) < 0) break;
    if (m.stage != w->stage) {
      kill_worker(w);
      worker_failed(w, F_EXIT, "said hello as stage %u", m.stage);
      return;
    }
    if (w->state == W_SPAWNED) w->state = W_HELLO;
    break;
  }
  case BT_MSG_READY: {
    bt_msg_ready_t m;
    if ((rc = bt_msg_decode_ready(f, &m)) < 0) break;
    snprintf(w->addr, sizeof w->addr, "%s", m.addr);
    snprintf(w->gpu, sizeof w->gpu, "%s", m.gpu);
    memcpy(w->nccl_id, m.nccl_id, sizeof w->nccl_id);
    bt_debug("stage %u ready at %s", w->stage, w->addr);
    if (w->state == W_SPAWNED || w->state == W_HELLO) w->state = W_READY;
    if (s->state != JOB_STARTING) break;
    uint32_t ready = 0;
    for (uint32_t i = 0; i < s->n; i++) ready += s->w[i].state == W_READY;
    if (ready == s->n) send_start(s);
    break;
  }
  case BT_MSG_HEARTBEAT: {
    bt_msg_heartbeat_t m;
    if ((rc = bt_msg_decode_heartbeat(f, &m)) < 0) break;
    /* Leaving NCCL set-up is progress: its allowance ends there. */
    if (m.actions_done != w->actions_done || (w->phase == BT_PHASE_SETUP && m.phase != BT_PHASE_SETUP))
      w->last_progress_ms = sup_now_ms(s);
    w->actions_done = m.actions_done;
    w->step = m.step;
    w->action = m.action;
    w->phase = m.phase;
    break;
  }
  case BT_MSG_METRICS: {
    bt_msg_metrics_t m;
    if ((rc = bt_msg_decode_metrics(f, &m)) < 0) break;
    m.stage = w->stage;
    w->steps_reported++;
    /* A finished step is progress even when no heartbeat fell inside it. */
    w->last_progress_ms = sup_now_ms(s);
    if (m.step > w->step) w->step = m.step;
    sup_add_metrics(s, &m);
    break;
  }
  case BT_MSG_TRACE: {
    bt_msg_trace_t m;
    if ((rc = bt_msg_decode_trace(f, &m)) < 0) break;
    for (uint32_t i = 0; i < m.n; i++) m.ev[i].worker = w->stage;
    sup_add_trace(s, &m);
    bt_msg_trace_free(&m);
    break;
  }
  case BT_MSG_HASHES: {
    bt_msg_hashes_t m;
    if ((rc = bt_msg_decode_hashes(f, &m)) < 0) break;
    bt_hash_rec_t *p = realloc(w->hashes, (w->nhashes + m.n) * sizeof *p);
    if (p) {
      memcpy(p + w->nhashes, m.recs, m.n * sizeof *p);
      w->hashes = p;
      w->nhashes += m.n;
      w->hashes_received = 1;
    }
    bt_msg_hashes_free(&m);
    break;
  }
  case BT_MSG_ERROR: {
    bt_msg_error_t m;
    if ((rc = bt_msg_decode_error(f, &m)) < 0) break;
    snprintf(w->error_text, sizeof w->error_text, "%s", m.text);
    w->error_code = m.code;
    /* A failed save is not fatal to training (its step just never
     * commits); whatever it is, say it now, not only in a summary. */
    sup_clear_progress(s);
    bt_warn("stage %u reports: %s", w->stage, m.text);
    if (!strncmp(m.text, "checkpoint", 10))
      snprintf(s->res->ckpt_error, sizeof s->res->ckpt_error, "stage %u: %s", w->stage, m.text);
    break;
  }
  case BT_MSG_DONE: {
    bt_msg_step_t m;
    if ((rc = bt_msg_decode_step(f, &m)) < 0) break;
    w->done = 1;
    break;
  }
  case BT_MSG_SHARD_DURABLE: {
    bt_msg_shard_t m;
    if ((rc = bt_msg_decode_shard(f, &m)) < 0) break;
    m.stage = w->stage;
    sup_add_shard(s, &m);
    break;
  }
  case BT_MSG_CKPT_LATE: {
    bt_msg_step_t m;
    if ((rc = bt_msg_decode_step(f, &m)) < 0) break;
    if (m.step > w->step) w->step = m.step;
    sup_ckpt_late(s, w, m.step);
    break;
  }
  default:
    rc = BT_EFORMAT;
  }
  if (rc < 0) {
    kill_worker(w);
    worker_failed(w, F_CRASH, "sent a bad %s control message (%s)", bt_msg_type_name(f->type),
                  bt_strerror(rc));
  }
}

void sup_on_ctl_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  worker_t *w = h->data;
  if (w->ccap - w->clen < 65536) {
    size_t cap = w->ccap ? w->ccap * 2 : 131072;
    uint8_t *p = realloc(w->cbuf, cap);
    if (!p) {
      *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS to sup_on_ctl_read */
      return;
    }
    w->cbuf = p;
    w->ccap = cap;
  }
  *buf = uv_buf_init((char *)w->cbuf + w->clen, (unsigned)(w->ccap - w->clen));
}

/* A worker that exited 0 before its DONE was read: now that nothing more
 * can arrive, did it finish? */
static void done_verdict(worker_t *w) {
  if (!w->done_at_eof) return;
  w->done_at_eof = 0;
  if (!w->done && w->sup->state != JOB_STOPPING)
    worker_failed(w, F_EXIT, "exited with code 0 before finishing its steps");
}

void sup_on_ctl_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  worker_t *w = st->data;
  if (nread < 0) {
    /* EOF: the worker closed its end (it is exiting); its exit callback
     * says how it went, unless it came first (done_at_eof). */
    sup_close_handle((uv_handle_t *)&w->ctl, &w->ctl_open);
    done_verdict(w);
    return;
  }
  w->clen += (size_t)nread;
  sup_ctl_bytes(w);
}

/* Parses and handles every whole frame in w->cbuf (read from its control
 * channel, or relayed by its node agent). */
void sup_ctl_bytes(worker_t *w) {
  size_t off = 0;
  while (off < w->clen) {
    bt_frame_t f;
    long n = bt_frame_parse(w->cbuf + off, w->clen - off, &f);
    if (n == 0) break;
    if (n < 0) {
      kill_worker(w);
      worker_failed(w, F_CRASH, "sent a malformed control frame (%s)", bt_strerror((int)n));
      sup_close_handle((uv_handle_t *)&w->ctl, &w->ctl_open);
      return;
    }
    handle_msg(w, &f);
    off += (size_t)n;
  }
  memmove(w->cbuf, w->cbuf + off, w->clen - off);
  w->clen -= off;
}

static const char *wexit_meaning(int64_t code) {
  switch (code) {
  case BT_SUP_WEXIT_ERROR: return "internal error";
  case BT_SUP_WEXIT_USAGE: return "bad usage";
  case BT_SUP_WEXIT_RETRY: return "retryable: peer lost, deadline or transport error";
  case BT_SUP_WEXIT_FATAL: return "fatal: bad configuration";
  case BT_SUP_WEXIT_STOPPED: return "stopped on request";
  case BT_SUP_WEXIT_ORPHAN: return "lost the supervisor";
  case BT_SUP_WEXIT_NONFINITE: return "non-finite loss or parameters";
  default: return "unknown exit code";
  }
}

void sup_on_exit_cb(uv_process_t *p, int64_t status, int term_signal) {
  worker_t *w = p->data;
  /* Anything the worker forked is in its group; it must not outlive it or
   * hold our pipes open. The group id cannot be reused while a member is
   * alive, so this reaches only what the worker left behind. */
  kill(-w->pid, SIGKILL);
  sup_close_handle((uv_handle_t *)p, &w->proc_open);
  sup_worker_exited(w, status, term_signal);
}

/* A stage on a lost node: gone without an exit status; the cause. */
void sup_worker_lost(worker_t *w, const char *why) {
  if (w->state == W_EXITED) return;
  w->state = W_EXITED;
  w->sup->exited++;
  worker_failed(w, F_CRASH, "%s", why);
  sup_maybe_finish(w->sup);
}

/* How a worker's exit reads (local: libuv's exit callback; remote: its
 * agent's EXITED, sent after every control byte). */
void sup_worker_exited(worker_t *w, int64_t status, int term_signal) {
  sup_t *s = w->sup;
  if (w->state == W_EXITED) return;
  w->state = W_EXITED;
  w->exit_status = status;
  w->term_signal = term_signal;
  s->exited++;
  if (term_signal) {
    if (!w->killed_by_us)
      worker_failed(w, F_CRASH, "killed by signal %d (%s)", term_signal, strsignal(term_signal));
  } else if (status == BT_SUP_WEXIT_DONE) {
    /* libuv may report the exit before we read the last frames the worker
     * wrote (DONE, HASHES): while its control channel is still open, the
     * verdict waits for the channel's EOF. */
    if (!w->done && s->state != JOB_STOPPING && w->ctl_open && !uv_is_closing((uv_handle_t *)&w->ctl))
      w->done_at_eof = 1;
    else if (!w->done && s->state != JOB_STOPPING)
      worker_failed(w, F_EXIT, "exited with code 0 before finishing its steps");
  } else if (status == BT_SUP_WEXIT_STOPPED && s->state == JOB_STOPPING) {
    /* it obeyed our STOP or ABORT */
  } else if (status == BT_SUP_WEXIT_RETRY && s->stop_signal) {
    /* Stopping on a signal: a stage that had run ahead of the stop step
     * loses its neighbours as they stop; that is the stop, not a failure. */
    bt_info("stage %u: lost a peer while the job stops", w->stage);
  } else {
    worker_failed(w, status == BT_SUP_WEXIT_RETRY ? F_RETRY : F_EXIT, "exited with code %lld (%s)",
                  (long long)status, wexit_meaning(status));
  }
  sup_maybe_finish(s);
}

static void on_drain(uv_timer_t *t) {
  sup_t *s = t->data;
  /* The workers are gone but something still holds a pipe open (a process
   * that left the worker's group): stop waiting for its EOF. */
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    sup_close_handle((uv_handle_t *)&w->out, &w->out_open);
    sup_close_handle((uv_handle_t *)&w->err, &w->err_open);
    sup_close_handle((uv_handle_t *)&w->ctl, &w->ctl_open);
    done_verdict(w);
  }
}

void sup_maybe_finish(sup_t *s) {
  if (s->exited < s->n || s->state == JOB_DONE) return;
  s->state = JOB_DONE;
  if (s->hub_async_open) {
    bt_hub_notify(s->o->hub, NULL);
    sup_close_handle((uv_handle_t *)&s->hub_async, &s->hub_async_open);
  }
  uv_timer_stop(&s->grace);
  uv_timer_stop(&s->tick);
  sup_close_handle((uv_handle_t *)&s->tick, &s->tick_open);
  sup_close_handle((uv_handle_t *)&s->grace, &s->grace_open);
  if (s->sig_open) {
    uv_signal_stop(&s->sigint);
    uv_signal_stop(&s->sigterm);
    uv_signal_stop(&s->sigusr1);
    uv_signal_stop(&s->sighup);
    uv_signal_stop(&s->sigtstp);
    uv_signal_stop(&s->sigcont);
    hold_job_signals();
    sup_close_handle((uv_handle_t *)&s->sigint, &s->sig_open);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigusr1, NULL);
    uv_close((uv_handle_t *)&s->sighup, NULL);
    uv_close((uv_handle_t *)&s->sigtstp, NULL);
    uv_close((uv_handle_t *)&s->sigcont, NULL);
  }
  uv_timer_start(&s->drain, on_drain, 1000, 0);
  uv_unref((uv_handle_t *)&s->drain); /* pipes closing on EOF end the loop first */
}

/* BATON_NCCL_SETUP_MS, the deadline the workers give NCCL's set-up
 * (worker/pipeline.c refuses a malformed value, so the default here only
 * covers a job that then fails anyway). */
static uint64_t nccl_setup_ms(void) {
  const char *e = getenv("BATON_NCCL_SETUP_MS");
  char *end;
  long long v = e && *e ? strtoll(e, &end, 10) : 0;
  return e && *e && !*end && v > 0 ? (uint64_t)v : 120000;
}

/* The supervisor itself did not run for a while (SIGSTOP, Ctrl-Z, a frozen
 * machine): silence it measured is its own, not its workers'. Every
 * deadline starts again from now before anyone is judged; a worker that is
 * really frozen is still caught one timeout later. */
void sup_rearm_deadlines(sup_t *s, const char *why, double stalled_s) {
  uv_update_time(&s->loop);
  uint64_t now = sup_now_ms(s);
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    w->last_beat_ms = now;
    if (w->last_progress_ms) w->last_progress_ms = now;
  }
  if (s->state == JOB_STARTING) s->start_ms = now;
  /* Said once: after a SIGSTOP the late tick usually re-arms first and the
   * SIGCONT that follows finds nothing stale. */
  if (stalled_s * 1000.0 > 2.0 * (double)s->dl.tick_ms) {
    sup_clear_progress(s);
    bt_warn("the supervisor did not run for %.1f s (%s): every deadline re-armed", stalled_s, why);
  }
  s->last_tick_ms = now;
}

static void on_tick(uv_timer_t *t) {
  sup_t *s = t->data;
  uint64_t now = sup_now_ms(s);
  uint64_t hb_ms = (uint64_t)s->dl.heartbeat_timeout_ms;
  /* A tick far later than its period: the loop's clock jumped. */
  if (now - s->last_tick_ms > (uint64_t)s->dl.tick_ms + hb_ms / 2) {
    sup_rearm_deadlines(s, "stopped or starved", (double)(now - s->last_tick_ms) / 1000.0);
    return;
  }
  s->last_tick_ms = now;
  if (s->state == JOB_STARTING && now - s->start_ms > (uint64_t)s->dl.start_ms) {
    for (uint32_t i = 0; i < s->n; i++) {
      worker_t *w = &s->w[i];
      if (w->state == W_READY || w->state == W_EXITED) continue;
      kill_worker(w);
      worker_failed(w, F_CRASH, "not ready within the start-up timeout (%.1f s)", s->o->start_timeout_s);
      return;
    }
  }
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    if (w->state == W_EXITED || w->state == W_SPAWNED || w->killed_by_us) continue;
    if (now - w->last_beat_ms > hb_ms && !sup_remote_silent(w)) {
      /* Frozen (stopped, livelocked): it cannot act on STOP, kill it now. */
      kill_worker(w);
      worker_failed(w, F_CRASH, "no heartbeat for %.1f s (killed)", (double)(now - w->last_beat_ms) / 1000.0);
    }
  }
  if (s->state != JOB_RUNNING) return;
  /* Progress: when one stage hangs, its neighbours stop progressing too.
   * Among the stalled stages blame one that is not waiting on a peer, else
   * the one stalled longest. */
  worker_t *blame = NULL;
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    if (w->state != W_RUNNING || w->done || w->killed_by_us || sup_remote_silent(w)) continue;
    /* The first step and a checkpoint phase get their own allowances
     * (common/deadlines.c says why). */
    uint64_t allow = (uint64_t)(w->steps_reported == 0 ? s->dl.first_step_ms : s->dl.progress_ms);
    if (w->phase == BT_PHASE_CKPT) allow = (uint64_t)s->dl.ckpt_ms;
    /* Creating the NCCL communicators has its own documented deadline. */
    if (w->phase == BT_PHASE_SETUP) allow = nccl_setup_ms() + (uint64_t)s->dl.progress_ms;
    if (now - w->last_progress_ms <= allow) continue;
    if (!blame || (blame->phase == BT_PHASE_WAIT && w->phase != BT_PHASE_WAIT) ||
        ((blame->phase == BT_PHASE_WAIT) == (w->phase == BT_PHASE_WAIT) &&
         w->last_progress_ms < blame->last_progress_ms))
      blame = w;
  }
  if (blame && blame->phase == BT_PHASE_CONNECT) {
    /* Still connecting to its peers: a start-up failure (something holds
     * the data plane), not a hang in the schedule. */
    kill_worker(blame);
    worker_failed(blame, F_CRASH, "start-up: stage %u did not connect to its peers within %.1f s (killed)",
                  blame->stage, (double)(now - blame->last_progress_ms) / 1000.0);
    return;
  }
  if (blame) {
    blame = sup_hang_report(s, blame);
    kill_worker(blame);
    worker_failed(blame, F_CRASH, "no progress for %.1f s at step %lld, action %lld, %s (killed)",
                  (double)(now - blame->last_progress_ms) / 1000.0, (long long)blame->step,
                  (long long)blame->action,
                  blame->phase == BT_PHASE_WAIT    ? "waiting for a peer"
                  : blame->phase == BT_PHASE_SETUP ? "setting up NCCL"
                                                   : "computing");
  }
}

void bt_sup_opts_default(bt_sup_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->lineage.parent_step = -1;
  o->nstages = 1;
  o->chunks = 1;
  o->first_step = 1;
  o->last_step = 1;
  o->grace_s = 5.0;
  o->heartbeat_timeout_s = 2.0;
  o->progress_timeout_s = 5.0;
  o->start_timeout_s = 120.0;
  o->progress = 1;
}

/* Picks the root cause (highest rank, then earliest) and writes the summary
 * with the tail of that worker's stderr; returns it (NULL: none failed). */
static worker_t *report_failure(sup_t *s) {
  worker_t *root = NULL;
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    if (w->fail == F_NONE) continue;
    if (!root || w->fail > root->fail || (w->fail == root->fail && w->fail_ms < root->fail_ms)) root = w;
  }
  if (!root) return NULL;
  bt_sup_result_t *r = s->res;
  r->failed_stage = (int)root->stage;
  r->root_pid = root->pid;
  snprintf(r->reason, sizeof r->reason, "%s", root->fail_reason);
  size_t tk = 0;
  for (int i = 0; i < root->tail.n && tk < sizeof r->root_tail; i++) {
    int w = snprintf(r->root_tail + tk, sizeof r->root_tail - tk, "%s\n", bt_tail_line(&root->tail, i));
    if (w < 0) break;
    tk += (size_t)w;
  }
  char msg[16384];
  int k = snprintf(msg, sizeof msg, "baton: stage %u failed: %s%s%s\n", root->stage, root->fail_reason,
                   root->error_text[0] ? ": " : "", root->error_text);
  if (root->tail.n > 0 && k < (int)sizeof msg)
    k += snprintf(msg + k, sizeof msg - (size_t)k, "baton: last %d lines of stage %u's stderr:\n",
                  root->tail.n, root->stage);
  for (int i = 0; i < root->tail.n && k < (int)sizeof msg; i++)
    k += snprintf(msg + k, sizeof msg - (size_t)k, "  [stage %u] %s\n", root->stage, bt_tail_line(&root->tail, i));
  if (k > (int)sizeof msg - 1) k = (int)sizeof msg - 1;
  sup_clear_progress(s);
  sup_write_all(STDERR_FILENO, msg, (size_t)k);
  return root;
}

static void finish_result(sup_t *s) {
  bt_sup_result_t *r = s->res;
  r->steps_done = s->steps_done;
  r->stop_signal = s->stop_signal;
  worker_t *root = report_failure(s);
  /* The ending and the exit code: one function decides (ending.c). */
  bt_worker_end_t rw = {0};
  bt_incarnation_t in = {.root = root ? &rw : NULL,
                         .all_done = 1,
                         .stop_signal = s->stop_signal,
                         .signals_seen = s->signals_seen,
                         .has_ckpt_dir = s->o->ckpt_dir != NULL,
                         .nonfinite = s->nonfinite,
                         .internal_error = s->internal_error,
                         .steps_done = s->steps_done,
                         .last_step = s->o->last_step,
                         .committed_step = r->committed_step,
                         .preempt_at = s->preempt_at,
                         .resumed_step = s->o->first_step - 1};
  if (root) rw = (bt_worker_end_t){.term_signal = root->term_signal, .exit_status = root->exit_status,
                                   .error_code = root->error_code};
  for (uint32_t i = 0; i < s->n; i++) in.all_done &= s->w[i].done;
  bt_ending_t e;
  bt_job_ending(&in, &e);
  r->end = e.end;
  r->exit_code = e.exit_code;
  if (e.reason[0]) snprintf(r->reason, sizeof r->reason, "%s", e.reason);
  if (r->exit_code == BT_SUP_EXIT_OK && s->o->want_hash) {
    size_t total = 0;
    for (uint32_t i = 0; i < s->n; i++) {
      if (!s->w[i].hashes_received) {
        r->exit_code = BT_SUP_EXIT_FAILED;
        r->end = BT_SUP_END_INTERNAL;
        r->failed_stage = (int)i;
        snprintf(r->reason, sizeof r->reason, "sent no tensor hashes");
        bt_error("stage %u failed: %s", i, r->reason);
        return;
      }
      total += s->w[i].nhashes;
    }
    bt_hash_rec_t *all = malloc((total ? total : 1) * sizeof *all);
    if (!all) {
      r->exit_code = BT_SUP_EXIT_FAILED;
      r->end = BT_SUP_END_INTERNAL;
      snprintf(r->reason, sizeof r->reason, "out of memory combining hashes");
      bt_error("%s", r->reason);
      return;
    }
    size_t k = 0;
    for (uint32_t i = 0; i < s->n; i++) {
      memcpy(all + k, s->w[i].hashes, s->w[i].nhashes * sizeof *all);
      k += s->w[i].nhashes;
    }
    int rc = bt_hash_combine(all, total, &r->hash);
    free(all);
    if (rc < 0) {
      r->exit_code = BT_SUP_EXIT_FAILED;
      r->end = BT_SUP_END_INTERNAL;
      snprintf(r->reason, sizeof r->reason, "stages sent overlapping tensor hashes (%s)", bt_strerror(rc));
      bt_error("%s", r->reason);
      return;
    }
    r->have_hash = 1;
  }
}

static void on_delay(uv_timer_t *t) {
  sup_t *s = t->data;
  if (!s->delaying) return;
  s->delaying = 0;
  sup_spawn_all(s);
}

/* The signals the job answers (sup_preempt.c says how). */
static void start_signals(sup_t *s) {
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  uv_signal_init(&s->loop, &s->sigusr1);
  uv_signal_init(&s->loop, &s->sighup);
  uv_signal_init(&s->loop, &s->sigtstp);
  uv_signal_init(&s->loop, &s->sigcont);
  s->sig_open = 1;
  s->sigint.data = s->sigterm.data = s->sigusr1.data = s->sighup.data = s;
  s->sigtstp.data = s->sigcont.data = s;
  uv_signal_start(&s->sigint, sup_on_signal, SIGINT);
  uv_signal_start(&s->sigterm, sup_on_signal, SIGTERM);
  uv_signal_start(&s->sigusr1, sup_on_signal, SIGUSR1);
  /* A closed terminal or ssh session: a preemption like SIGTERM. */
  uv_signal_start(&s->sighup, sup_on_signal, SIGHUP);
  uv_signal_start(&s->sigtstp, sup_on_tstp, SIGTSTP);
  uv_signal_start(&s->sigcont, sup_on_cont, SIGCONT);
  /* One that came between incarnations: to the watchers now. */
  int held = g_held_signal;
  if (held) {
    g_held_signal = 0;
    raise(held);
  }
}

/* 1 when the options make a job: counts in range, and what the workers'
 * environment carries fits its fields (common/workerenv.h). */
static int opts_ok(const bt_sup_opts_t *o) {
  bt_worker_env_t fit;
  return o->worker_argv && o->worker_argv[0] && o->nstages >= 1 && o->nstages <= BT_MAX_STAGES &&
         o->last_step >= o->first_step - 1 && (!o->ckpt_dir || strlen(o->ckpt_dir) < sizeof fit.ckpt_dir) &&
         (!o->restore_dir || strlen(o->restore_dir) < sizeof fit.restore_dir) &&
         (!o->faults || strlen(o->faults) < sizeof fit.faults) &&
         (!o->schedule_csv || strlen(o->schedule_csv) < sizeof fit.schedule_csv) &&
         (!o->data_bind || strlen(o->data_bind) < sizeof fit.data_bind);
}

int bt_supervisor_run(const bt_sup_opts_t *o, bt_sup_result_t *res) {
  bt_deadlines_t dl;
  if (!opts_ok(o) || bt_deadlines_derive(o->heartbeat_timeout_s, o->progress_timeout_s, o->start_timeout_s,
                                         o->grace_s, &dl))
    return BT_EARG;
  memset(res, 0, sizeof *res);
  res->failed_stage = -1;
  int rc = 0;
  sup_t *s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  /* A write to the control socket of a worker that just died raises
   * SIGPIPE; it must be an EPIPE for libuv instead of our death. */
  struct sigaction ign = {.sa_handler = SIG_IGN}, old_pipe;
  sigaction(SIGPIPE, &ign, &old_pipe);
  s->o = o;
  s->res = res;
  s->dl = dl;
  s->n = o->nstages;
  s->tty = isatty(STDOUT_FILENO);
  if (o->token) snprintf(s->token, sizeof s->token, "%s", o->token);
  else sup_make_token(s->token);
  if ((rc = uv_loop_init(&s->loop)) < 0) {
    free(s);
    sigaction(SIGPIPE, &old_pipe, NULL);
    return rc;
  }
  s->w = calloc(s->n, sizeof *s->w);
  if (!s->w) {
    rc = -ENOMEM;
    goto out;
  }
  const char *mode = o->events_append ? "a" : "w";
  if (o->events_file) s->events = o->events_file;
  else if (o->events_path && !(s->events = fopen(o->events_path, mode))) {
    rc = -errno;
    bt_error("--events %s: %s", o->events_path, strerror(errno));
    goto out;
  }
  if (o->metrics_path && !(s->metrics = fopen(o->metrics_path, mode))) {
    rc = -errno;
    bt_error("--metrics %s: %s", o->metrics_path, strerror(errno));
    goto out;
  }
  uv_timer_init(&s->loop, &s->tick);
  uv_timer_init(&s->loop, &s->grace);
  uv_timer_init(&s->loop, &s->drain);
  uv_timer_init(&s->loop, &s->delay);
  s->tick_open = s->grace_open = s->drain_open = s->delay_open = 1;
  s->tick.data = s->grace.data = s->drain.data = s->delay.data = s;
  start_signals(s);
  uv_update_time(&s->loop);
  s->start_ms = sup_now_ms(s);
  s->epoch_s = o->epoch_s > 0 ? o->epoch_s : bt_clock_s();
  s->steps_done = o->first_step - 1;
  s->state = JOB_STARTING;
  if (o->hub) {
    /* Events of earlier incarnations are stale; a node lost meanwhile
     * shows when its stages are spawned (bt_hub_send says BT_EPEER). */
    bt_hub_drain(o->hub);
    uv_async_init(&s->loop, &s->hub_async, sup_on_hub);
    s->hub_async.data = s;
    s->hub_async_open = 1;
    bt_hub_notify(o->hub, &s->hub_async);
  }
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    w->sup = s;
    w->stage = i;
    w->node = o->stage_node ? o->stage_node[i] : 0;
    w->remote = o->hub && w->node != 0;
    w->last_beat_ms = s->start_ms;
    w->state = W_EXITED; /* until spawned: nothing to wait for */
  }
  if (o->spawn_delay_s > 0) {
    /* The back-off runs inside the loop, so a signal meanwhile is handled
     * (a preemption during the back-off stops at once). */
    s->delaying = 1;
    uv_timer_start(&s->delay, on_delay, (uint64_t)(o->spawn_delay_s * 1000.0), 0);
  } else
    sup_spawn_all(s);
  /* The tick decides every timeout (common/deadlines.c). */
  s->last_tick_ms = sup_now_ms(s);
  uv_timer_start(&s->tick, on_tick, (uint64_t)s->dl.tick_ms, (uint64_t)s->dl.tick_ms);
  sup_maybe_finish(s);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  /* The drain timer was unref'd: close it now that everything else ended. */
  sup_close_handle((uv_handle_t *)&s->drain, &s->drain_open);
  sup_close_handle((uv_handle_t *)&s->delay, &s->delay_open);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  if (s->progress_shown) { /* keep the last progress line on the terminal */
    sup_write_all(STDOUT_FILENO, "\n", 1);
    s->progress_shown = 0;
  }
  finish_result(s);
  if (o->trace_path) {
    int trc = sup_write_trace(s);
    if (trc < 0) {
      bt_error("--trace %s: %s; the job will exit 1", o->trace_path, bt_strerror(trc));
      res->output_error = 1;
    }
  }
  bt_json_t j;
  if (sup_event_begin(s, &j, "end")) {
    bt_json_kint(&j, "exit_code", res->exit_code);
    bt_json_kint(&j, "steps_done", res->steps_done);
    bt_json_kint(&j, "failed_stage", res->failed_stage);
    bt_json_kstr(&j, "reason", res->reason);
    sup_event_end(s, &j);
  }
out:
  if (s->events && s->events != o->events_file) fclose(s->events);
  if (s->metrics) fclose(s->metrics);
  if (s->w) {
    for (uint32_t i = 0; i < s->n; i++) {
      free(s->w[i].cbuf);
      free(s->w[i].hashes);
    }
  }
  for (size_t i = 0; i < s->npend; i++) {
    free(s->pend[i].m);
    free(s->pend[i].have);
  }
  for (size_t i = 0; i < s->nckpt; i++) {
    if (s->nckpt && s->o->ckpt_dir)
      bt_info("checkpoint step %lld: %u of %u shards durable, not committed", (long long)s->ckpt[i].step,
              s->ckpt[i].count, s->n);
    free(s->ckpt[i].r);
    free(s->ckpt[i].have);
  }
  for (size_t i = 0; i < s->nready; i++) {
    bt_info("checkpoint step %lld: every shard durable, not committed", (long long)s->ready[i].step);
    free(s->ready[i].r);
    free(s->ready[i].have);
  }
  free(s->ready);
  free(s->ckpt);
  free(s->pend);
  free(s->trace);
  free(s->w);
  if (uv_loop_close(&s->loop) != 0) bt_warn("libuv loop closed with handles still open");
  free(s);
  sigaction(SIGPIPE, &old_pipe, NULL);
  return rc;
}
