/* sup_joblog.c - what the job tells people: the events file (one JSON line
 * per event, flushed at once; its handle may be the caller's, shared by
 * every incarnation), the metrics lines, the trace, the progress line.
 * Part of the supervisor (sup_internal.h). */
#include "launcher/sup_internal.h"

void sup_write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* a closed terminal or pipe: output is best effort */
    p += w;
    n -= (size_t)w;
  }
}

/* Clears an updating progress line before other output lands on the tty. */
void sup_clear_progress(sup_t *s) {
  if (s->progress_shown) {
    sup_write_all(STDOUT_FILENO, "\r\033[K", 4);
    s->progress_shown = 0;
  }
}

/* One rule for --metrics, --events and --trace: the first failed write is
 * said once, the file is dropped (no line half-written after it), training
 * goes on, and the job's exit says so (res->output_error). The events
 * handle `baton run` shares across incarnations is not closed here: the
 * result says it failed (res->events_failed) and its owner closes it. */
static void output_failed(sup_t *s, FILE **f, const char *flag, const char *path, int err) {
  sup_clear_progress(s);
  bt_error("%s %s: %s: no more lines are written there; the job will exit 1", flag, path ? path : "", strerror(err));
  if (*f == s->o->events_file) s->res->events_failed = 1;
  else fclose(*f);
  *f = NULL;
  s->res->output_error = 1;
}

/* Writes one line and flushes; 0 or the errno of the failure. */
static int put_line(FILE *f, const char *line) {
  errno = 0;
  if (fprintf(f, "%s\n", line) < 0 || fflush(f) != 0 || ferror(f)) return errno ? errno : EIO;
  return 0;
}

/* Starts an event line: {"event":NAME,"time_s":seconds since start, … */
int sup_event_begin(sup_t *s, bt_json_t *j, const char *name) {
  if (!s->events) return 0;
  bt_json_init(j);
  bt_json_obj_begin(j);
  bt_json_kstr(j, "event", name);
  bt_json_knum(j, "time_s", bt_clock_s() - s->epoch_s);
  return 1;
}

/* Ends and writes it; flushed at once, so the log survives our death. */
void sup_event_end(sup_t *s, bt_json_t *j) {
  bt_json_obj_end(j);
  int err;
  if (!bt_json_error(j) && s->events && (err = put_line(s->events, bt_json_cstr(j))))
    output_failed(s, &s->events, "--events", s->o->events_path, err);
  bt_json_free(j);
}

void sup_log_kill_event(sup_t *s, const char *why) {
  bt_json_t j;
  if (!sup_event_begin(s, &j, "kill")) return;
  bt_json_kstr(&j, "why", why);
  bt_json_key(&j, "stages");
  bt_json_arr_begin(&j);
  for (uint32_t i = 0; i < s->n; i++)
    if (s->w[i].state != W_EXITED) bt_json_int(&j, i);
  bt_json_arr_end(&j);
  sup_event_end(s, &j);
}

static void emit_step(sup_t *s, pending_step_t *p) {
  /* The stage holding the head (the last virtual stage): the last stage,
   * or stage 0 in a V placement. */
  const bt_schedule_t *sc = s->o->sched;
  int hw = sc && sc->p == (int)s->n ? bt_sched_worker_of(sc, bt_sched_nstages(sc) - 1) : (int)s->n - 1;
  const bt_msg_metrics_t *head = &p->m[hw];
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
    if (s->o->recovering && sup_event_begin(s, &j, "recovered")) {
      const bt_sup_opts_t *o = s->o;
      bt_json_kint(&j, "restart", o->recovering);
      bt_json_kint(&j, "step", p->step);
      bt_json_knum(&j, "detect_s", o->rec_detect_s);
      bt_json_knum(&j, "stop_s", o->rec_stop_s);
      bt_json_knum(&j, "restore_s", s->res->ready_s - o->rec_stopped_at_s);
      bt_json_knum(&j, "first_step_s", s->res->first_step_s - o->rec_stopped_at_s);
      bt_json_kint(&j, "steps_lost", o->rec_steps_lost);
      sup_event_end(s, &j);
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
    int err;
    if (!bt_json_error(&j) && (err = put_line(s->metrics, bt_json_cstr(&j))))
      output_failed(s, &s->metrics, "--metrics", s->o->metrics_path, err);
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
    sup_clear_progress(s);
    sup_write_all(STDOUT_FILENO, line, (size_t)n);
    s->progress_shown = 1;
  } else {
    line[n] = '\n';
    sup_write_all(STDOUT_FILENO, line, (size_t)n + 1);
  }
}

/* Steps are emitted in order once every stage reported them. */
void sup_add_metrics(sup_t *s, const bt_msg_metrics_t *m) {
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

void sup_add_trace(sup_t *s, const bt_msg_trace_t *t) {
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

int sup_write_trace(sup_t *s) {
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
