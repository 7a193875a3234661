/* sup_spawn.c - starting the workers: the environment of each (the table
 * of common/workerenv.h), uv_spawn with the control socketpair on fd 3,
 * and forwarding their stdout and stderr line by line as "[stage S] ...",
 * keeping the tail of stderr for the failure report. Part of the
 * supervisor (sup_internal.h). */
#include "launcher/sup_internal.h"

extern char **environ;

static void emit_line(worker_t *w, int is_err, const char *line, size_t n) {
  sup_clear_progress(w->sup);
  bt_stage_line_write(is_err ? STDERR_FILENO : STDOUT_FILENO, w->stage, line, n);
  if (is_err) bt_tail_keep(&w->tail, line, n);
}

static void emit_out(void *w, const char *line, size_t n) { emit_line(w, 0, line, n); }
static void emit_err(void *w, const char *line, size_t n) { emit_line(w, 1, line, n); }

static void flush_lines(worker_t *w, int is_err, int at_eof) {
  bt_lines_flush(is_err ? &w->lerr : &w->lout, at_eof, is_err ? emit_err : emit_out, w);
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
    if (is_err) sup_close_handle((uv_handle_t *)&w->err, &w->err_open);
    else sup_close_handle((uv_handle_t *)&w->out, &w->out_open);
    return;
  }
  (is_err ? &w->lerr : &w->lout)->len += (size_t)nread;
  flush_lines(w, is_err, 0);
}

/* The worker's environment: the table of common/workerenv.h first, then
 * the extras, then the supervisor's own minus any variable we set (a stale
 * RANK from an outer launcher must not win). */
char **sup_build_env(sup_t *s, uint32_t stage, int own_env) {
  size_t nextra = 0, nours = bt_worker_env_count();
  while (s->o->extra_env && s->o->extra_env[nextra]) nextra++;
  char **env = calloc(nours + nextra + 1, sizeof *env);
  if (!env) return NULL;
  const bt_sup_opts_t *o = s->o;
  bt_worker_env_t we;
  bt_worker_env_defaults(&we);
  we.rank = we.local_rank = we.stage = stage;
  we.world_size = we.local_world_size = we.nstages = s->n;
  if (o->stage_node && o->stage_local && o->node_stages) {
    we.local_rank = o->stage_local[stage];
    we.local_world_size = o->node_stages[stage];
  }
  snprintf(we.master_addr, sizeof we.master_addr, "%s", o->master_addr ? o->master_addr : "127.0.0.1");
  we.master_port = o->master_port;
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
  /* multi-node: each stage binds its own node's address */
  snprintf(we.data_bind, sizeof we.data_bind, "%s",
           o->stage_bind ? o->stage_bind[stage] : o->data_bind ? o->data_bind : "");
  we.ckpt_compress = o->ckpt_compress;
  int got = bt_worker_env_format(&we, env, nours);
  if (got < 0) {
    free(env);
    return NULL;
  }
  /* ours, then the extras, then the inherited rest (workerproc.h's rule) */
  size_t k = (size_t)got;
  for (size_t i = 0; i < nextra; i++) env[k++] = (char *)o->extra_env[i];
  char **merged = bt_env_merge((const char *const *)env, k, own_env ? environ : NULL);
  for (size_t i = 0; i < (size_t)got; i++) free(env[i]);
  free(env);
  return merged;
}

void sup_free_env(char **env) { bt_env_free(env); }

static int spawn_worker(sup_t *s, worker_t *w) {
  char **env = sup_build_env(s, w->stage, 1);
  if (!env) return -ENOMEM;
  bt_wp_handles_t h = {&w->proc, &w->out, &w->err, &w->ctl, &w->proc_open, &w->out_open, &w->err_open, &w->ctl_open};
  int rc = bt_wp_spawn(&s->loop, &h, w, s->o->worker_argv[0], s->o->worker_argv, env, sup_on_exit_cb);
  sup_free_env(env);
  if (rc < 0) {
    sup_close_handle((uv_handle_t *)&w->proc, &w->proc_open);
    sup_close_handle((uv_handle_t *)&w->out, &w->out_open);
    sup_close_handle((uv_handle_t *)&w->err, &w->err_open);
    sup_close_handle((uv_handle_t *)&w->ctl, &w->ctl_open);
    return rc;
  }
  w->pid = w->proc.pid;
  w->state = W_SPAWNED;
  bt_info("started stage %u (pid %d)", w->stage, w->pid);
  bt_json_t j;
  if (sup_event_begin(s, &j, "spawn")) {
    bt_json_kint(&j, "stage", w->stage);
    bt_json_kint(&j, "pid", w->pid);
    sup_event_end(s, &j);
  }
  uv_read_start((uv_stream_t *)&w->out, on_out_alloc, on_out_read);
  uv_read_start((uv_stream_t *)&w->err, on_out_alloc, on_out_read);
  uv_read_start((uv_stream_t *)&w->ctl, sup_on_ctl_alloc, sup_on_ctl_read);
  return 0;
}

void sup_make_token(char out[33]) { bt_random_id(out); }

void sup_spawn_all(sup_t *s) {
  s->res->spawned = 1;
  uv_update_time(&s->loop);
  s->start_ms = sup_now_ms(s);
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    w->last_beat_ms = s->start_ms;
    int src = w->remote ? sup_remote_spawn(s, w) : spawn_worker(s, w);
    if (src < 0) {
      bt_error("cannot start stage %u (%s): %s", i, s->o->worker_argv[0], bt_strerror(src));
      w->state = W_EXITED;
      s->exited++;
      w->fail = F_EXIT;
      w->fail_ms = sup_now_ms(s);
      snprintf(w->fail_reason, sizeof w->fail_reason, "could not be started: %s", bt_strerror(src));
      for (uint32_t k = i + 1; k < s->n; k++) s->exited++;
      sup_kill_all(s);
      sup_begin_stop(s, 1, 0);
      break;
    }
  }
  sup_maybe_finish(s);
}
