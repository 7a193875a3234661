/* supervisor.c - see supervisor.h.
 *
 * Handle ownership: every worker has a process handle and three pipes
 * (stdout, stderr, control); the job has a tick timer (timeouts), a grace
 * timer, a drain timer and three signal handles. Each is closed exactly once
 * through close_handle(), and uv_run() returns only when the last close
 * callback ran, so the supervisor exits with every child reaped and every
 * handle closed.
 */
#include "launcher/supervisor.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "checkpoint/ckpt.h"
#include "common/clock.h"
#include "common/deadlines.h"
#include "common/error.h"
#include "common/exitcodes.h"
#include "common/json.h"
#include "common/log.h"
#include "common/workerenv.h"
#include "launcher/ending.h"
#include "schedules/comm.h"

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

#define LINE_MAX_BYTES 4096
#define TAIL_LEN 512

typedef enum { JOB_STARTING, JOB_RUNNING, JOB_STOPPING, JOB_DONE } job_state_t;
typedef enum { W_SPAWNED, W_HELLO, W_READY, W_RUNNING, W_EXITED } worker_state_t;

/* Why a worker failed, ranked for choosing the root cause: a stage that
 * crashed or hung is the cause, a neighbour that then lost its peer (exit
 * code RETRY) is a consequence. */
typedef enum { F_NONE = 0, F_RETRY = 1, F_EXIT = 2, F_CRASH = 3 } fail_rank_t;

typedef struct {
  char buf[LINE_MAX_BYTES];
  size_t len;
} linebuf_t;

struct sup;

typedef struct {
  struct sup *sup;
  uint32_t stage;
  worker_state_t state;
  uv_process_t proc;
  uv_pipe_t out, err, ctl;
  int proc_open, out_open, err_open, ctl_open; /* handle not yet closed */
  int pid;
  linebuf_t lout, lerr;
  char tail[BT_SUP_TAIL_LINES][TAIL_LEN];
  int tail_n, tail_pos;
  uint8_t *cbuf;
  size_t clen, ccap;
  char addr[BT_ADDR_MAX];
  char gpu[BT_GPU_NAME_MAX];   /* READY.gpu: "" on the CPU */
  uint8_t nccl_id[128];        /* READY.nccl_id (stage 0 with NCCL) */
  uint64_t last_beat_ms, last_progress_ms;
  int64_t actions_done, step, action, steps_reported;
  uint32_t phase;
  int done;                    /* DONE received */
  int done_at_eof;             /* exited 0 before DONE was read: decide at the control EOF */
  int hashes_received;
  bt_hash_rec_t *hashes;
  size_t nhashes;
  char error_text[512];        /* from an ERROR message */
  int error_code;              /* its bt error code */
  int killed_by_us;            /* our SIGKILL: not a failure of its own */
  int64_t exit_status;
  int term_signal;
  fail_rank_t fail;
  uint64_t fail_ms;
  char fail_reason[256];
} worker_t;

typedef struct {
  int64_t step;
  uint32_t count;
  bt_msg_metrics_t *m;         /* nstages entries */
  uint8_t *have;
} pending_step_t;

/* Shard reports of one checkpoint step, until every stage's is durable. */
typedef struct {
  int64_t step;
  uint32_t count;
  bt_msg_shard_t *r;           /* nstages entries */
  uint8_t *have;
} pending_ckpt_t;

typedef struct sup {
  const bt_sup_opts_t *o;
  bt_sup_result_t *res;
  uv_loop_t loop;
  job_state_t state;
  worker_t *w;
  uint32_t n;
  uv_timer_t tick, grace, drain, delay;
  uv_signal_t sigint, sigterm, sigusr1;
  int tick_open, grace_open, drain_open, delay_open, sig_open;
  int delaying;                /* back-off before the spawn is running */
  pending_ckpt_t *ckpt;
  size_t nckpt;
  int64_t preempt_at;          /* CKPT_AT step of a preemption (0: none) */
  int nonfinite;               /* a commit found NaN/Inf */
  uint64_t start_ms, started_ms;
  double epoch_s;              /* bt_clock_s() at spawn: trace times are relative to it */
  char token[33];
  int stop_signal;             /* first stopping signal */
  int signals_seen;
  uint32_t exited;
  int internal_error;          /* a negative code of the supervisor itself */
  FILE *metrics;
  FILE *events;
  pending_step_t *pend;
  size_t npend;
  int64_t steps_done;
  bt_trace_ev_t *trace;
  size_t ntrace, trace_cap;
  int tty;                     /* progress as one updating line */
  int progress_shown;          /* a progress line without newline is on screen */
  uint64_t progress_drawn_ns;  /* uv_hrtime() of the last progress output */
  bt_deadlines_t dl;           /* the deadline chain (common/deadlines.h) */
} sup_t;

static uint64_t now_ms(sup_t *s) { return uv_now(&s->loop); }

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* a closed terminal or pipe: output is best effort */
    p += w;
    n -= (size_t)w;
  }
}

/* Clears an updating progress line before other output lands on the tty. */
static void clear_progress(sup_t *s) {
  if (s->progress_shown) {
    write_all(STDOUT_FILENO, "\r\033[K", 4);
    s->progress_shown = 0;
  }
}

/* ---------- the event log ---------- */

/* Starts an event line: {"event":NAME,"time_s":seconds since start, … */
static int event_begin(sup_t *s, bt_json_t *j, const char *name) {
  if (!s->events) return 0;
  bt_json_init(j);
  bt_json_obj_begin(j);
  bt_json_kstr(j, "event", name);
  bt_json_knum(j, "time_s", bt_clock_s() - s->epoch_s);
  return 1;
}

/* Ends and writes it; flushed at once, so the log survives our death. */
static void event_end(sup_t *s, bt_json_t *j) {
  bt_json_obj_end(j);
  if (!bt_json_error(j)) {
    fprintf(s->events, "%s\n", bt_json_cstr(j));
    fflush(s->events);
  }
  bt_json_free(j);
}

/* ---------- handle bookkeeping ---------- */

static void on_closed_flag(uv_handle_t *h) {
  int *flag = h->data;
  *flag = 0;
}

/* Closes h once; *flag (the "still open" mark) drops in the close callback. */
static void close_handle(uv_handle_t *h, int *flag) {
  if (!*flag || uv_is_closing(h)) return;
  h->data = flag;
  uv_close(h, on_closed_flag);
}

/* ---------- killing ---------- */

/* SIGKILL to the worker's process group (it is a session leader, so its
 * group id is its pid) and to the pid itself: right after uv_spawn the child
 * may not have reached setsid() yet, and then the group does not exist. */
static void kill_worker(worker_t *w) {
  if (w->state == W_EXITED || w->pid <= 0) return;
  w->killed_by_us = 1;
  kill(-w->pid, SIGKILL);
  kill(w->pid, SIGKILL);
}

static void kill_all(sup_t *s) {
  for (uint32_t i = 0; i < s->n; i++) kill_worker(&s->w[i]);
}

/* ---------- control messages out ---------- */

static void on_ctl_written(uv_write_t *req, int status) { free(req); }

static void ctl_send(worker_t *w, const bt_buf_t *b) {
  if (!w->ctl_open || uv_is_closing((uv_handle_t *)&w->ctl) || b->err) return;
  uv_write_t *req = malloc(sizeof *req + b->len);
  if (!req) return;
  uint8_t *copy = (uint8_t *)(req + 1);
  memcpy(copy, b->data, b->len);
  uv_buf_t buf = uv_buf_init((char *)copy, (unsigned)b->len);
  if (uv_write(req, (uv_stream_t *)&w->ctl, &buf, 1, on_ctl_written) < 0) free(req);
}

static void send_step_msg(worker_t *w, uint16_t type, int64_t step) {
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

/* ---------- state transitions ---------- */

static void maybe_finish(sup_t *s);

static void log_kill_event(sup_t *s, const char *why) {
  bt_json_t j;
  if (!event_begin(s, &j, "kill")) return;
  bt_json_kstr(&j, "why", why);
  bt_json_key(&j, "stages");
  bt_json_arr_begin(&j);
  for (uint32_t i = 0; i < s->n; i++)
    if (s->w[i].state != W_EXITED) bt_json_int(&j, i);
  bt_json_arr_end(&j);
  event_end(s, &j);
}

static void on_grace(uv_timer_t *t) {
  sup_t *s = t->data;
  bt_warn("grace period over: killing the remaining workers");
  log_kill_event(s, "grace period over");
  kill_all(s);
}

/* Enters STOPPING: workers that can still act get STOP (finish step `stop_at`
 * and exit) or ABORT (exit now); whatever is left after the grace period
 * gets SIGKILL. A frozen worker is killed by the caller first: a grace
 * period is only for workers that can still act on "stop". */
static void begin_stop(sup_t *s, int abort_now, int64_t stop_at) {
  if (s->state == JOB_STOPPING || s->state == JOB_DONE) return;
  s->state = JOB_STOPPING;
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    if (w->state == W_EXITED) continue;
    if (abort_now) send_empty(w, BT_MSG_ABORT);
    else send_step_msg(w, BT_MSG_STOP, stop_at);
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
    w->fail_ms = now_ms(s);
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
    if (event_begin(s, &j, "failure")) {
      bt_json_kint(&j, "stage", w->stage);
      bt_json_kstr(&j, "kind", kinds[rank]);
      bt_json_kstr(&j, "reason", w->fail_reason);
      bt_json_kint(&j, "step", w->step);
      event_end(s, &j);
    }
  }
  clear_progress(s);
  bt_error("stage %u: %s", w->stage, w->fail_reason);
  begin_stop(s, 1, 0);
}

static void send_start(sup_t *s) {
  bt_msg_start_t *m = calloc(1, sizeof *m);
  if (!m) {
    s->internal_error = -ENOMEM;
    kill_all(s);
    begin_stop(s, 1, 0);
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
  uint64_t now = now_ms(s);
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
  if (event_begin(s, &j, "ready")) {
    bt_json_kint(&j, "stages", s->n);
    bt_json_kint(&j, "first_step", s->o->first_step);
    bt_json_kint(&j, "last_step", s->o->last_step);
    bt_json_kint(&j, "restore_step", s->o->restore_step);
    event_end(s, &j);
  }
  bt_info("all %u stages ready after %.2f s: training", s->n, (double)(now - s->start_ms) / 1000.0);
}

/* ---------- metrics, progress, trace ---------- */

static void emit_step(sup_t *s, pending_step_t *p) {
  const bt_msg_metrics_t *head = &p->m[s->n - 1]; /* the last stage holds the head */
  double step_s = 0, busy = 0;
  for (uint32_t i = 0; i < s->n; i++) {
    if (p->m[i].step_s > step_s) step_s = p->m[i].step_s;
    busy += p->m[i].busy_s;
  }
  double tps = step_s > 0 ? (double)head->tokens / step_s : 0.0;
  double bubble = step_s > 0 ? 1.0 - busy / ((double)s->n * step_s) : 0.0;
  if (bubble < 0) bubble = 0;
  s->steps_done = p->step;
  if (s->res->first_step_s == 0) {
    s->res->first_step_s = bt_clock_s() - s->epoch_s;
    bt_json_t j;
    if (s->o->recovering && event_begin(s, &j, "recovered")) {
      const bt_sup_opts_t *o = s->o;
      bt_json_kint(&j, "restart", o->recovering);
      bt_json_kint(&j, "step", p->step);
      bt_json_knum(&j, "detect_s", o->rec_detect_s);
      bt_json_knum(&j, "stop_s", o->rec_stop_s);
      bt_json_knum(&j, "restore_s", s->res->ready_s - o->rec_stopped_at_s);
      bt_json_knum(&j, "first_step_s", s->res->first_step_s - o->rec_stopped_at_s);
      bt_json_kint(&j, "steps_lost", o->rec_steps_lost);
      event_end(s, &j);
    }
  }
  if (s->metrics) {
    bt_json_t j;
    bt_json_init(&j);
    bt_json_obj_begin(&j);
    bt_json_kint(&j, "step", p->step);
    bt_json_knum(&j, "loss", head->loss);
    bt_json_knum(&j, "tokens_per_s", tps);
    bt_json_knum(&j, "step_s", step_s);
    bt_json_knum(&j, "bubble_fraction", bubble);
    bt_json_kint(&j, "tokens", head->tokens);
    bt_json_key(&j, "busy_s");
    bt_json_arr_begin(&j);
    for (uint32_t i = 0; i < s->n; i++) bt_json_num(&j, p->m[i].busy_s);
    bt_json_arr_end(&j);
    bt_json_key(&j, "idle_s");
    bt_json_arr_begin(&j);
    for (uint32_t i = 0; i < s->n; i++) bt_json_num(&j, p->m[i].idle_s);
    bt_json_arr_end(&j);
    bt_json_obj_end(&j);
    if (!bt_json_error(&j)) {
      fprintf(s->metrics, "%s\n", bt_json_cstr(&j));
      fflush(s->metrics);
    }
    bt_json_free(&j);
  }
  if (!s->o->progress) return;
  /* A terminal line is redrawn at most ten times a second; a log gets about
   * twenty lines per run (as `baton train` prints), and always the last. */
  int last = p->step == s->o->last_step;
  int64_t total = s->o->last_step - s->o->first_step + 1, every = total >= 20 ? total / 20 : 1;
  uint64_t now = uv_hrtime();
  if (s->tty && !last && now - s->progress_drawn_ns < 100000000ull) return;
  if (!s->tty && !last && (p->step - s->o->first_step + 1) % every != 0) return;
  s->progress_drawn_ns = now;
  char line[256];
  int n = snprintf(line, sizeof line, "step %lld/%lld  loss %.4f  %.0f tokens/s  bubble %.1f%%",
                   (long long)p->step, (long long)s->o->last_step, head->loss, tps, 100.0 * bubble);
  if (n < 0) return;
  if (n >= (int)sizeof line) n = (int)sizeof line - 1;
  if (s->tty) {
    clear_progress(s);
    write_all(STDOUT_FILENO, line, (size_t)n);
    s->progress_shown = 1;
  } else {
    line[n] = '\n';
    write_all(STDOUT_FILENO, line, (size_t)n + 1);
  }
}

/* Steps are emitted in order once every stage reported them. */
static void add_metrics(sup_t *s, const bt_msg_metrics_t *m) {
  pending_step_t *p = NULL;
  for (size_t i = 0; i < s->npend; i++)
    if (s->pend[i].step == m->step) p = &s->pend[i];
  if (!p) {
    pending_step_t *np = realloc(s->pend, (s->npend + 1) * sizeof *np);
    if (!np) return;
    s->pend = np;
    p = &s->pend[s->npend];
    memset(p, 0, sizeof *p);
    p->step = m->step;
    p->m = calloc(s->n, sizeof *p->m);
    p->have = calloc(s->n, 1);
    if (!p->m || !p->have) {
      free(p->m);
      free(p->have);
      return;
    }
    s->npend++;
  }
  if (m->stage >= s->n || p->have[m->stage]) return;
  p->have[m->stage] = 1;
  p->m[m->stage] = *m;
  p->count++;
  for (;;) {
    size_t best = s->npend;
    for (size_t i = 0; i < s->npend; i++)
      if (best == s->npend || s->pend[i].step < s->pend[best].step) best = i;
    if (best == s->npend || s->pend[best].count < s->n) break;
    emit_step(s, &s->pend[best]);
    free(s->pend[best].m);
    free(s->pend[best].have);
    s->pend[best] = s->pend[--s->npend];
  }
}

static void add_trace(sup_t *s, const bt_msg_trace_t *t) {
  if (!s->o->trace_path) return;
  if (s->ntrace + t->n > s->trace_cap) {
    size_t cap = s->trace_cap ? s->trace_cap : 1024;
    while (cap < s->ntrace + t->n) cap *= 2;
    bt_trace_ev_t *p = realloc(s->trace, cap * sizeof *p);
    if (!p) return;
    s->trace = p;
    s->trace_cap = cap;
  }
  memcpy(s->trace + s->ntrace, t->ev, t->n * sizeof *t->ev);
  s->ntrace += t->n;
}

static int write_trace(sup_t *s) {
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_key(&j, "traceEvents");
  bt_json_arr_begin(&j);
  for (uint32_t i = 0; i < s->n; i++) {
    char name[32];
    snprintf(name, sizeof name, "stage %u", i);
    bt_json_obj_begin(&j);
    bt_json_kstr(&j, "name", "thread_name");
    bt_json_kstr(&j, "ph", "M");
    bt_json_kint(&j, "pid", 0);
    bt_json_kint(&j, "tid", i);
    bt_json_key(&j, "args");
    bt_json_obj_begin(&j);
    bt_json_kstr(&j, "name", name);
    bt_json_obj_end(&j);
    bt_json_obj_end(&j);
  }
  for (size_t i = 0; i < s->ntrace; i++) {
    const bt_trace_ev_t *e = &s->trace[i];
    bt_json_obj_begin(&j);
    bt_json_kstr(&j, "name", e->action);
    bt_json_kstr(&j, "ph", "X");
    bt_json_knum(&j, "ts", (e->start_s - s->epoch_s) * 1e6);
    bt_json_knum(&j, "dur", (e->end_s - e->start_s) * 1e6);
    bt_json_kint(&j, "pid", 0);
    bt_json_kint(&j, "tid", e->worker);
    bt_json_obj_end(&j);
  }
  bt_json_arr_end(&j);
  bt_json_obj_end(&j);
  int rc = bt_json_error(&j);
  FILE *f = NULL;
  if (rc < 0) goto out;
  f = fopen(s->o->trace_path, "w");
  if (!f) {
    rc = -errno;
    goto out;
  }
  fputs(bt_json_cstr(&j), f);
  fputc('\n', f);
  if (fflush(f) != 0 || ferror(f)) rc = -EIO;
out:
  if (f && fclose(f) != 0 && rc == 0) rc = -errno;
  bt_json_free(&j);
  return rc;
}

/* ---------- checkpoints ---------- */

static void log_checkpoint_event(sup_t *s, int64_t step, double commit_s, int rc, int removed) {
  bt_json_t j;
  if (!event_begin(s, &j, "checkpoint")) return;
  bt_json_kint(&j, "step", step);
  bt_json_kstr(&j, "result", rc ? bt_strerror(rc) : "committed");
  bt_json_knum(&j, "commit_s", commit_s);
  bt_json_kint(&j, "removed", removed);
  bt_json_kint(&j, "preemption", step == s->preempt_at);
  event_end(s, &j);
}

/* Every stage's shard of `step` is durable: commit it (the same function
 * `baton train` calls), apply retention, and, when it is the step a
 * preemption asked for, stop. A commit blocks the loop while it reads the
 * parameters back; that is the check that keeps NaN out of checkpoints, and
 * heartbeats queue up meanwhile rather than being lost. */
static void commit_step(sup_t *s, pending_ckpt_t *p) {
  clear_progress(s); /* the checkpoint module logs the commit */
  double t0 = bt_clock_s();
  int rc = bt_ckpt_commit_lineage(s->o->ckpt_dir, p->step, p->r, s->n, &s->o->lineage);
  int removed = 0;
  if (rc == 0) {
    if (p->step > s->res->committed_step) s->res->committed_step = p->step;
    bt_ckpt_retention_t pol = {.keep_last = s->o->keep_last > 0 ? s->o->keep_last : 2,
                               .keep_every = s->o->keep_every};
    int rrc = bt_ckpt_retain(s->o->ckpt_dir, &pol, p->step, &removed);
    if (rrc) bt_warn("checkpoint retention in %s: %s", s->o->ckpt_dir, bt_strerror(rrc));
    clear_progress(s);
    bt_debug("checkpoint step %lld committed (%.2f s)", (long long)p->step, bt_clock_s() - t0);
  } else {
    clear_progress(s);
    bt_error("checkpoint step %lld not committed: %s", (long long)p->step, bt_strerror(rc));
  }
  /* uv_now is cached: a long commit must not count as silence. */
  uv_update_time(&s->loop);
  uint64_t now = now_ms(s);
  for (uint32_t i = 0; i < s->n; i++) {
    s->w[i].last_beat_ms = now;
    if (s->w[i].last_progress_ms < now) s->w[i].last_progress_ms = now;
  }
  log_checkpoint_event(s, p->step, bt_clock_s() - t0, rc, removed);
  if (rc == BT_ENONFINITE) {
    /* Restarting from the previous step would replay the same bits. */
    s->nonfinite = 1;
    begin_stop(s, 1, 0);
    return;
  }
  if (s->preempt_at && p->step == s->preempt_at && s->state == JOB_RUNNING) {
    int64_t at = 0;
    for (uint32_t i = 0; i < s->n; i++)
      if (s->w[i].step > at) at = s->w[i].step;
    bt_warn("preemption checkpoint step %lld committed: stopping after step %lld", (long long)p->step,
            (long long)(at + 1));
    begin_stop(s, 0, at + 1);
  }
}

static void add_shard(sup_t *s, const bt_msg_shard_t *m) {
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
  commit_step(s, &done);
  free(done.r);
  free(done.have);
}

/* Asks every stage to save after step `at` (a preemption). */
static void send_ckpt_at(sup_t *s, int64_t at) {
  s->preempt_at = at;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->w[i].state != W_EXITED) send_step_msg(&s->w[i], BT_MSG_CKPT_AT, at);
}

/* A stage had already trained past the preemption step: name a step ahead
 * of everyone again (DESIGN §5). */
static void ckpt_late(sup_t *s, worker_t *w, int64_t done) {
  if (!s->preempt_at || s->state != JOB_RUNNING) return;
  int64_t at = done + 1;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->w[i].step + 1 > at) at = s->w[i].step + 1;
  if (at > s->o->last_step) at = s->o->last_step;
  if (at <= s->preempt_at) return;
  bt_info("stage %u was past step %lld: checkpoint at step %lld instead", w->stage,
          (long long)s->preempt_at, (long long)at);
  send_ckpt_at(s, at);
}

/* ---------- control messages in ---------- */

static void handle_msg(worker_t *w, const bt_frame_t *f) {
  sup_t *s = w->sup;
  int rc = 0;
  w->last_beat_ms = now_ms(s); /* any frame proves the worker alive */
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
    if (m.actions_done != w->actions_done) w->last_progress_ms = now_ms(s);
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
    w->last_progress_ms = now_ms(s);
    if (m.step > w->step) w->step = m.step;
    add_metrics(s, &m);
    break;
  }
  case BT_MSG_TRACE: {
    bt_msg_trace_t m;
    if ((rc = bt_msg_decode_trace(f, &m)) < 0) break;
    for (uint32_t i = 0; i < m.n; i++) m.ev[i].worker = w->stage;
    add_trace(s, &m);
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
    clear_progress(s);
    bt_warn("stage %u reports: %s", w->stage, m.text);
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
    add_shard(s, &m);
    break;
  }
  case BT_MSG_CKPT_LATE: {
    bt_msg_step_t m;
    if ((rc = bt_msg_decode_step(f, &m)) < 0) break;
    if (m.step > w->step) w->step = m.step;
    ckpt_late(s, w, m.step);
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

static void on_ctl_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  worker_t *w = h->data;
  if (w->ccap - w->clen < 65536) {
    size_t cap = w->ccap ? w->ccap * 2 : 131072;
    uint8_t *p = realloc(w->cbuf, cap);
    if (!p) {
      *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS to on_ctl_read */
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

static void on_ctl_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  worker_t *w = st->data;
  if (nread < 0) {
    /* EOF: the worker closed its end (it is exiting); its exit callback
     * says how it went, unless it came first (done_at_eof). */
    close_handle((uv_handle_t *)&w->ctl, &w->ctl_open);
    done_verdict(w);
    return;
  }
  w->clen += (size_t)nread;
  size_t off = 0;
  while (off < w->clen) {
    bt_frame_t f;
    long n = bt_frame_parse(w->cbuf + off, w->clen - off, &f);
    if (n == 0) break;
    if (n < 0) {
      kill_worker(w);
      worker_failed(w, F_CRASH, "sent a malformed control frame (%s)", bt_strerror((int)n));
      close_handle((uv_handle_t *)&w->ctl, &w->ctl_open);
      return;
    }
    handle_msg(w, &f);
    off += (size_t)n;
  }
  memmove(w->cbuf, w->cbuf + off, w->clen - off);
  w->clen -= off;
}

/* ---------- stdout / stderr forwarding ---------- */

static void keep_tail(worker_t *w, const char *line, size_t n) {
  if (n >= TAIL_LEN) n = TAIL_LEN - 1;
  memcpy(w->tail[w->tail_pos], line, n);
  w->tail[w->tail_pos][n] = 0;
  w->tail_pos = (w->tail_pos + 1) % BT_SUP_TAIL_LINES;
  if (w->tail_n < BT_SUP_TAIL_LINES) w->tail_n++;
}

static void emit_line(worker_t *w, int is_err, const char *line, size_t n) {
  char out[LINE_MAX_BYTES + 32];
  int k = snprintf(out, sizeof out, "[stage %u] ", w->stage);
  if (n > sizeof out - (size_t)k - 1) n = sizeof out - (size_t)k - 1;
  memcpy(out + k, line, n);
  out[k + n] = '\n';
  clear_progress(w->sup);
  /* One write per line, so lines of different stages never interleave. */
  write_all(is_err ? STDERR_FILENO : STDOUT_FILENO, out, (size_t)k + n + 1);
  if (is_err) keep_tail(w, line, n);
}

static void flush_lines(worker_t *w, int is_err, int at_eof) {
  linebuf_t *lb = is_err ? &w->lerr : &w->lout;
  size_t start = 0;
  for (size_t i = 0; i < lb->len; i++) {
    if (lb->buf[i] != '\n') continue;
    emit_line(w, is_err, lb->buf + start, i - start);
    start = i + 1;
  }
  /* A full buffer without a newline, or the last bytes before EOF, still
   * make a line rather than being lost. */
  if ((start == 0 && lb->len == sizeof lb->buf) || (at_eof && start < lb->len)) {
    emit_line(w, is_err, lb->buf + start, lb->len - start);
    start = lb->len;
  }
  memmove(lb->buf, lb->buf + start, lb->len - start);
  lb->len -= start;
}

static void on_out_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  worker_t *w = h->data;
  linebuf_t *lb = h == (uv_handle_t *)&w->err ? &w->lerr : &w->lout;
  *buf = uv_buf_init(lb->buf + lb->len, (unsigned)(sizeof lb->buf - lb->len));
}

static void on_out_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  worker_t *w = st->data;
  int is_err = st == (uv_stream_t *)&w->err;
  if (nread < 0) {
    flush_lines(w, is_err, 1);
    if (is_err) close_handle((uv_handle_t *)&w->err, &w->err_open);
    else close_handle((uv_handle_t *)&w->out, &w->out_open);
    return;
  }
  (is_err ? &w->lerr : &w->lout)->len += (size_t)nread;
  flush_lines(w, is_err, 0);
}

/* ---------- exits ---------- */

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

static void on_exit_cb(uv_process_t *p, int64_t status, int term_signal) {
  worker_t *w = p->data;
  sup_t *s = w->sup;
  w->state = W_EXITED;
  w->exit_status = status;
  w->term_signal = term_signal;
  s->exited++;
  /* Anything the worker forked is in its group; it must not outlive it or
   * hold our pipes open. The group id cannot be reused while a member is
   * alive, so this reaches only what the worker left behind. */
  kill(-w->pid, SIGKILL);
  close_handle((uv_handle_t *)p, &w->proc_open);
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
  maybe_finish(s);
}

static void on_drain(uv_timer_t *t) {
  sup_t *s = t->data;
  /* The workers are gone but something still holds a pipe open (a process
   * that left the worker's group): stop waiting for its EOF. */
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    close_handle((uv_handle_t *)&w->out, &w->out_open);
    close_handle((uv_handle_t *)&w->err, &w->err_open);
    close_handle((uv_handle_t *)&w->ctl, &w->ctl_open);
    done_verdict(w);
  }
}

static void maybe_finish(sup_t *s) {
  if (s->exited < s->n || s->state == JOB_DONE) return;
  s->state = JOB_DONE;
  uv_timer_stop(&s->grace);
  uv_timer_stop(&s->tick);
  close_handle((uv_handle_t *)&s->tick, &s->tick_open);
  close_handle((uv_handle_t *)&s->grace, &s->grace_open);
  if (s->sig_open) {
    uv_signal_stop(&s->sigint);
    uv_signal_stop(&s->sigterm);
    uv_signal_stop(&s->sigusr1);
    close_handle((uv_handle_t *)&s->sigint, &s->sig_open);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigusr1, NULL);
  }
  uv_timer_start(&s->drain, on_drain, 1000, 0);
  uv_unref((uv_handle_t *)&s->drain); /* pipes closing on EOF end the loop first */
}

/* ---------- timers and signals ---------- */

/* The stage stage w waits on: the sender of the receive its current action
 * needs (schedules/comm.h), or NULL when it is not waiting on a peer. */
static worker_t *waits_on(sup_t *s, worker_t *w) {
  const bt_schedule_t *sc = s->o->sched;
  if (!sc || w->phase != BT_PHASE_WAIT || w->action < 0 || (int)w->stage >= sc->p) return NULL;
  bt_comm_t c;
  if (bt_comm_of(sc, (int)w->stage, (size_t)w->action, w->step, &c) < 0 || c.nrecv == 0) return NULL;
  int peer = c.recv[0].peer;
  return peer >= 0 && (uint32_t)peer < s->n ? &s->w[peer] : NULL;
}

/* A hang, before anything is stopped: prints (and logs) where every stage
 * is in the schedule grid, and returns the root cause — the stage the
 * others wait on. Starting from the suspect, follow "waits on" through the
 * schedule's communication: a stage waiting for a peer is not the cause
 * while that peer is itself stuck elsewhere. The end of the chain (a stage
 * not waiting on anyone, or the first one seen twice) is blamed. */
static worker_t *hang_report(sup_t *s, worker_t *suspect) {
  worker_t *root = suspect;
  uint8_t *seen = calloc(s->n, 1);
  if (seen) {
    for (worker_t *w = suspect; w && !seen[w->stage]; w = waits_on(s, w)) {
      seen[w->stage] = 1;
      root = w;
    }
    free(seen);
  }
  uint64_t now = now_ms(s);
  clear_progress(s);
  bt_error("hang: no progress; where each stage is (the one the others wait on is the cause):");
  bt_json_t j;
  int ev = event_begin(s, &j, "hang");
  if (ev) {
    bt_json_kint(&j, "root_stage", root->stage);
    bt_json_key(&j, "stages");
    bt_json_arr_begin(&j);
  }
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    char act[32] = "?", done[32] = "-";
    const bt_schedule_t *sc = s->o->sched;
    if (sc && (int)i < sc->p && w->action >= 0 && (size_t)w->action < bt_sched_len(sc, (int)i))
      bt_action_format(bt_sched_at(sc, (int)i, (size_t)w->action), act, sizeof act);
    if (sc && (int)i < sc->p && w->action > 0 && (size_t)w->action <= bt_sched_len(sc, (int)i))
      bt_action_format(bt_sched_at(sc, (int)i, (size_t)w->action - 1), done, sizeof done);
    worker_t *on = waits_on(s, w);
    const char *phase = w->phase == BT_PHASE_WAIT ? "waiting" : w->phase == BT_PHASE_COMPUTE ? "computing"
                        : w->phase == BT_PHASE_CKPT ? "checkpointing" : w->phase == BT_PHASE_IDLE ? "idle" : "starting";
    char on_text[48] = "";
    if (on) snprintf(on_text, sizeof on_text, " for stage %u", on->stage);
    bt_error("  stage %u: step %lld, last done %s, at action %lld (%s) %s%s, %.1f s without progress%s", i,
             (long long)w->step, done, (long long)w->action, act, phase, on_text,
             (double)(now - w->last_progress_ms) / 1000.0, w == root ? "   <- hung" : "");
    if (ev) {
      bt_json_obj_begin(&j);
      bt_json_kint(&j, "stage", i);
      bt_json_kint(&j, "step", w->step);
      bt_json_kint(&j, "action", w->action);
      bt_json_kstr(&j, "action_name", act);
      bt_json_kstr(&j, "last_done", done);
      bt_json_kstr(&j, "phase", phase);
      bt_json_kint(&j, "waits_on", on ? (int64_t)on->stage : -1);
      bt_json_knum(&j, "stalled_s", (double)(now - w->last_progress_ms) / 1000.0);
      bt_json_obj_end(&j);
    }
  }
  if (ev) {
    bt_json_arr_end(&j);
    event_end(s, &j);
  }
  return root;
}

static void on_tick(uv_timer_t *t) {
  sup_t *s = t->data;
  uint64_t now = now_ms(s);
  if (s->state == JOB_STARTING && now - s->start_ms > (uint64_t)s->dl.start_ms) {
    for (uint32_t i = 0; i < s->n; i++) {
      worker_t *w = &s->w[i];
      if (w->state == W_READY || w->state == W_EXITED) continue;
      kill_worker(w);
      worker_failed(w, F_CRASH, "not ready within the start-up timeout (%.1f s)", s->o->start_timeout_s);
      return;
    }
  }
  uint64_t hb_ms = (uint64_t)s->dl.heartbeat_timeout_ms;
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    if (w->state == W_EXITED || w->state == W_SPAWNED || w->killed_by_us) continue;
    if (now - w->last_beat_ms > hb_ms) {
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
    if (w->state != W_RUNNING || w->done || w->killed_by_us) continue;
    /* The first step and a checkpoint phase get their own allowances
     * (common/deadlines.c says why). */
    uint64_t allow = (uint64_t)(w->steps_reported == 0 ? s->dl.first_step_ms : s->dl.progress_ms);
    if (w->phase == BT_PHASE_CKPT) allow = (uint64_t)s->dl.ckpt_ms;
    if (now - w->last_progress_ms <= allow) continue;
    if (!blame || (blame->phase == BT_PHASE_WAIT && w->phase != BT_PHASE_WAIT) ||
        ((blame->phase == BT_PHASE_WAIT) == (w->phase == BT_PHASE_WAIT) &&
         w->last_progress_ms < blame->last_progress_ms))
      blame = w;
  }
  if (blame) {
    blame = hang_report(s, blame);
    kill_worker(blame);
    worker_failed(blame, F_CRASH, "no progress for %.1f s at step %lld, action %lld, %s (killed)",
                  (double)(now - blame->last_progress_ms) / 1000.0, (long long)blame->step,
                  (long long)blame->action, blame->phase == BT_PHASE_WAIT ? "waiting for a peer" : "computing");
  }
}

static void on_preempt_deadline(uv_timer_t *t) {
  sup_t *s = t->data;
  bt_warn("preemption checkpoint step %lld not committed in time: stopping without it",
          (long long)s->preempt_at);
  int64_t at = 0;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->w[i].step > at) at = s->w[i].step;
  begin_stop(s, 0, at + 1);
}

static void on_signal(uv_signal_t *h, int signum) {
  sup_t *s = h->data;
  s->signals_seen++;
  clear_progress(s);
  if (s->signals_seen == 1 && s->delaying) {
    /* Preempted during the back-off: nothing runs, nothing to save. */
    s->stop_signal = signum;
    s->delaying = 0;
    uv_timer_stop(&s->delay);
    bt_warn("%s during the back-off: stopping", strsignal(signum));
    s->state = JOB_STOPPING;
    s->exited = s->n;
    maybe_finish(s);
  } else if (s->signals_seen == 1 && s->o->ckpt_dir && s->state == JOB_RUNNING) {
    /* Preemption (DESIGN §5): checkpoint at S = the highest step any stage
     * reported + 1, commit it, then stop. Stages keep training meanwhile;
     * one that is already past S answers CKPT_LATE and S moves on. */
    s->stop_signal = signum;
    int64_t at = 0;
    for (uint32_t i = 0; i < s->n; i++)
      if (s->w[i].step > at) at = s->w[i].step;
    at++;
    if (at > s->o->last_step) at = s->o->last_step;
    bt_warn("%s: preemption: checkpoint at step %lld, then stop (again to kill now)", strsignal(signum),
            (long long)at);
    bt_json_t j;
    if (event_begin(s, &j, "preemption")) {
      char name[32];
      snprintf(name, sizeof name, "SIG%s", sigabbrev_np(signum) ? sigabbrev_np(signum) : "?");
      bt_json_kstr(&j, "signal", name);
      bt_json_kint(&j, "step", at);
      event_end(s, &j);
    }
    send_ckpt_at(s, at);
    /* A save that never becomes durable must not keep the job alive. */
    uv_timer_start(&s->grace, on_preempt_deadline, (uint64_t)s->dl.preempt_ms, 0);
  } else if (s->signals_seen == 1) {
    s->stop_signal = signum;
    /* Every stage must end on the same step S, so S must not be behind any
     * stage. What we know lags: the last stage finishes a step (and starts
     * the next) before the first stage's final backward ends, and messages
     * are in flight. So S is one past the furthest step any stage is known
     * to be training (DESIGN §5: the highest step reported + 1). */
    int64_t at = 0;
    for (uint32_t i = 0; i < s->n; i++)
      if (s->w[i].step > at) at = s->w[i].step;
    if (s->state == JOB_RUNNING) at++;
    /* Before START nothing has been trained: nothing to finish, abort. */
    int starting = s->state == JOB_STARTING;
    bt_warn("%s: stopping (after step %lld; grace %.1f s; again to kill now)", strsignal(signum),
            (long long)at, s->o->grace_s);
    bt_json_t j;
    if (event_begin(s, &j, "stop")) {
      char name[32];
      snprintf(name, sizeof name, "SIG%s", sigabbrev_np(signum) ? sigabbrev_np(signum) : "?");
      bt_json_kstr(&j, "signal", name);
      bt_json_kint(&j, "step", starting ? 0 : at);
      event_end(s, &j);
    }
    begin_stop(s, starting, at);
  } else if (signum != SIGUSR1) {
    bt_warn("%s again: killing every worker now", strsignal(signum));
    log_kill_event(s, "second signal");
    kill_all(s);
  }
}

/* ---------- spawning ---------- */

/* 1 when kv names one of the extra variables. */
static int is_extra(const char *kv, const char *const *extra) {
  for (size_t i = 0; extra && extra[i]; i++) {
    const char *eq = strchr(extra[i], '=');
    size_t len = eq ? (size_t)(eq - extra[i]) + 1 : strlen(extra[i]);
    if (!strncmp(kv, extra[i], len)) return 1;
  }
  return 0;
}

/* The worker's environment: the table of common/workerenv.h first, then
 * the extras, then the supervisor's own minus any variable we set (a stale
 * RANK from an outer launcher must not win). */
static char **build_env(sup_t *s, uint32_t stage) {
  size_t n = 0, nextra = 0, nours = bt_worker_env_count();
  while (environ[n]) n++;
  while (s->o->extra_env && s->o->extra_env[nextra]) nextra++;
  char **env = calloc(n + nextra + nours + 1, sizeof *env);
  if (!env) return NULL;
  const bt_sup_opts_t *o = s->o;
  bt_worker_env_t we;
  bt_worker_env_defaults(&we);
  we.rank = we.local_rank = we.stage = stage;
  we.world_size = we.local_world_size = we.nstages = s->n;
  snprintf(we.master_addr, sizeof we.master_addr, "127.0.0.1");
  we.fd = 3;
  we.supervisor_pid = (long)getpid();
  we.chunks = o->chunks;
  we.restart = o->restart_count;
  snprintf(we.token, sizeof we.token, "%s", s->token);
  we.heartbeat_ms = s->dl.heartbeat_ms;
  we.peer_timeout_ms = s->dl.peer_ms;
  we.ckpt_timeout_ms = s->dl.ckpt_wait_ms;
  /* lengths were checked in bt_supervisor_run */
  snprintf(we.ckpt_dir, sizeof we.ckpt_dir, "%s", o->ckpt_dir ? o->ckpt_dir : "");
  snprintf(we.restore_dir, sizeof we.restore_dir, "%s", o->restore_dir ? o->restore_dir : "");
  snprintf(we.faults, sizeof we.faults, "%s", o->faults ? o->faults : "");
  snprintf(we.schedule_csv, sizeof we.schedule_csv, "%s", o->schedule_csv ? o->schedule_csv : "");
  we.ckpt_compress = o->ckpt_compress;
  int got = bt_worker_env_format(&we, env, nours);
  if (got < 0) {
    free(env);
    return NULL;
  }
  size_t k = (size_t)got;
  int fail = 0;
  for (size_t i = 0; i < nextra; i++)
    if ((env[k] = strdup(o->extra_env[i]))) k++;
    else fail = 1;
  for (size_t i = 0; i < n; i++)
    if (!bt_worker_env_is_ours(environ[i]) && !is_extra(environ[i], o->extra_env) && (env[k] = strdup(environ[i])))
      k++;
  if (fail) {
    for (size_t i = 0; i < k; i++) free(env[i]);
    free(env);
    return NULL;
  }
  return env;
}

static void free_env(char **env) {
  if (!env) return;
  for (size_t i = 0; env[i]; i++) free(env[i]);
  free(env);
}

static int spawn_worker(sup_t *s, worker_t *w) {
  int rc = 0, sv[2] = {-1, -1};
  char **env = NULL;
  /* CLOEXEC on both ends: only this worker may inherit its end (libuv dup2s
   * it to fd 3, which clears the flag in the child alone). */
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    rc = -errno;
    goto out;
  }
  if ((rc = uv_pipe_init(&s->loop, &w->out, 0)) < 0) goto out;
  w->out_open = 1;
  w->out.data = w;
  if ((rc = uv_pipe_init(&s->loop, &w->err, 0)) < 0) goto out;
  w->err_open = 1;
  w->err.data = w;
  if ((rc = uv_pipe_init(&s->loop, &w->ctl, 0)) < 0) goto out;
  w->ctl_open = 1;
  w->ctl.data = w;
  if ((rc = uv_pipe_open(&w->ctl, sv[0])) < 0) goto out;
  sv[0] = -1; /* the pipe handle owns it now */
  if (!(env = build_env(s, w->stage))) {
    rc = -ENOMEM;
    goto out;
  }
  uv_stdio_container_t stdio[4] = {
      {.flags = UV_IGNORE},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&w->out},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&w->err},
      {.flags = UV_INHERIT_FD, .data.fd = sv[1]},
  };
  uv_process_options_t po = {
      .exit_cb = on_exit_cb,
      .file = s->o->worker_argv[0],
      .args = (char **)s->o->worker_argv,
      .env = env,
      .flags = UV_PROCESS_DETACHED,
      .stdio_count = 4,
      .stdio = stdio,
  };
  w->proc.data = w;
  /* uv_spawn initialises the handle before it can fail, so even a failed
   * spawn leaves a handle to close. */
  w->proc_open = 1;
  if ((rc = uv_spawn(&s->loop, &w->proc, &po)) < 0) goto out;
  w->pid = w->proc.pid;
  w->state = W_SPAWNED;
  bt_info("started stage %u (pid %d)", w->stage, w->pid);
  bt_json_t j;
  if (event_begin(s, &j, "spawn")) {
    bt_json_kint(&j, "stage", w->stage);
    bt_json_kint(&j, "pid", w->pid);
    event_end(s, &j);
  }
  uv_read_start((uv_stream_t *)&w->out, on_out_alloc, on_out_read);
  uv_read_start((uv_stream_t *)&w->err, on_out_alloc, on_out_read);
  uv_read_start((uv_stream_t *)&w->ctl, on_ctl_alloc, on_ctl_read);
out:
  if (sv[0] >= 0) close(sv[0]);
  if (sv[1] >= 0) close(sv[1]); /* the child has its copy; ours would hide its EOF */
  free_env(env);
  if (rc < 0) {
    close_handle((uv_handle_t *)&w->proc, &w->proc_open);
    close_handle((uv_handle_t *)&w->out, &w->out_open);
    close_handle((uv_handle_t *)&w->err, &w->err_open);
    close_handle((uv_handle_t *)&w->ctl, &w->ctl_open);
  }
  return rc;
}

/* ---------- the job ---------- */

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

static void make_token(char out[33]) {
  uint8_t r[16] = {0};
  ssize_t got = 0;
  while (got < (ssize_t)sizeof r) {
    ssize_t k = getrandom(r + got, sizeof r - (size_t)got, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += k;
  }
  if (got < (ssize_t)sizeof r) {
    /* No entropy source: still unique per job, if guessable. */
    uint64_t t = uv_hrtime() ^ ((uint64_t)getpid() << 32);
    memcpy(r, &t, sizeof t);
  }
  for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", r[i]);
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
  for (int i = 0; i < root->tail_n && tk < sizeof r->root_tail; i++) {
    int idx = (root->tail_pos - root->tail_n + i + BT_SUP_TAIL_LINES) % BT_SUP_TAIL_LINES;
    int w = snprintf(r->root_tail + tk, sizeof r->root_tail - tk, "%s\n", root->tail[idx]);
    if (w < 0) break;
    tk += (size_t)w;
  }
  char msg[16384];
  int k = snprintf(msg, sizeof msg, "baton: stage %u failed: %s%s%s\n", root->stage, root->fail_reason,
                   root->error_text[0] ? ": " : "", root->error_text);
  if (root->tail_n > 0 && k < (int)sizeof msg)
    k += snprintf(msg + k, sizeof msg - (size_t)k, "baton: last %d lines of stage %u's stderr:\n",
                  root->tail_n, root->stage);
  for (int i = 0; i < root->tail_n && k < (int)sizeof msg; i++) {
    int idx = (root->tail_pos - root->tail_n + i + BT_SUP_TAIL_LINES) % BT_SUP_TAIL_LINES;
    k += snprintf(msg + k, sizeof msg - (size_t)k, "  [stage %u] %s\n", root->stage, root->tail[idx]);
  }
  if (k > (int)sizeof msg - 1) k = (int)sizeof msg - 1;
  clear_progress(s);
  write_all(STDERR_FILENO, msg, (size_t)k);
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
                         .preempt_at = s->preempt_at};
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

static void spawn_all(sup_t *s) {
  uv_update_time(&s->loop);
  s->start_ms = now_ms(s);
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    w->last_beat_ms = s->start_ms;
    int src = spawn_worker(s, w);
    if (src < 0) {
      bt_error("cannot start stage %u (%s): %s", i, s->o->worker_argv[0], bt_strerror(src));
      w->state = W_EXITED;
      s->exited++;
      w->fail = F_EXIT;
      w->fail_ms = now_ms(s);
      snprintf(w->fail_reason, sizeof w->fail_reason, "could not be started: %s", bt_strerror(src));
      for (uint32_t k = i + 1; k < s->n; k++) s->exited++;
      kill_all(s);
      begin_stop(s, 1, 0);
      break;
    }
  }
  maybe_finish(s);
}

static void on_delay(uv_timer_t *t) {
  sup_t *s = t->data;
  if (!s->delaying) return;
  s->delaying = 0;
  spawn_all(s);
}

/* 1 when the options make a job: counts in range, and what the workers'
 * environment carries fits its fields (common/workerenv.h). */
static int opts_ok(const bt_sup_opts_t *o) {
  bt_worker_env_t fit;
  return o->worker_argv && o->worker_argv[0] && o->nstages >= 1 && o->nstages <= BT_MAX_STAGES &&
         o->last_step >= o->first_step - 1 && (!o->ckpt_dir || strlen(o->ckpt_dir) < sizeof fit.ckpt_dir) &&
         (!o->restore_dir || strlen(o->restore_dir) < sizeof fit.restore_dir) &&
         (!o->faults || strlen(o->faults) < sizeof fit.faults) &&
         (!o->schedule_csv || strlen(o->schedule_csv) < sizeof fit.schedule_csv);
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
  make_token(s->token);
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
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  uv_signal_init(&s->loop, &s->sigusr1);
  s->sig_open = 1;
  s->sigint.data = s->sigterm.data = s->sigusr1.data = s;
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  uv_signal_start(&s->sigusr1, on_signal, SIGUSR1);
  uv_update_time(&s->loop);
  s->start_ms = now_ms(s);
  s->epoch_s = o->epoch_s > 0 ? o->epoch_s : bt_clock_s();
  s->steps_done = o->first_step - 1;
  s->state = JOB_STARTING;
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    w->sup = s;
    w->stage = i;
    w->last_beat_ms = s->start_ms;
    w->state = W_EXITED; /* until spawned: nothing to wait for */
  }
  if (o->spawn_delay_s > 0) {
    /* The back-off runs inside the loop, so a signal meanwhile is handled
     * (a preemption during the back-off stops at once). */
    s->delaying = 1;
    uv_timer_start(&s->delay, on_delay, (uint64_t)(o->spawn_delay_s * 1000.0), 0);
  } else
    spawn_all(s);
  /* The tick decides every timeout (common/deadlines.c). */
  uv_timer_start(&s->tick, on_tick, (uint64_t)s->dl.tick_ms, (uint64_t)s->dl.tick_ms);
  maybe_finish(s);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  /* The drain timer was unref'd: close it now that everything else ended. */
  close_handle((uv_handle_t *)&s->drain, &s->drain_open);
  close_handle((uv_handle_t *)&s->delay, &s->delay_open);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  if (s->progress_shown) { /* keep the last progress line on the terminal */
    write_all(STDOUT_FILENO, "\n", 1);
    s->progress_shown = 0;
  }
  finish_result(s);
  if (o->trace_path) {
    int trc = write_trace(s);
    if (trc < 0) {
      bt_error("--trace %s: %s", o->trace_path, bt_strerror(trc));
      if (res->exit_code == BT_SUP_EXIT_OK) res->exit_code = BT_SUP_EXIT_FAILED;
    }
  }
  bt_json_t j;
  if (event_begin(s, &j, "end")) {
    bt_json_kint(&j, "exit_code", res->exit_code);
    bt_json_kint(&j, "steps_done", res->steps_done);
    bt_json_kint(&j, "failed_stage", res->failed_stage);
    bt_json_kstr(&j, "reason", res->reason);
    event_end(s, &j);
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
  free(s->ckpt);
  free(s->pend);
  free(s->trace);
  free(s->w);
  if (uv_loop_close(&s->loop) != 0) bt_warn("libuv loop closed with handles still open");
  free(s);
  sigaction(SIGPIPE, &old_pipe, NULL);
  return rc;
}
