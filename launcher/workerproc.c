/* workerproc.c - line forwarding, stderr tails and environment merging for
 * spawned workers, shared by the supervisor and the node agent (see
 * workerproc.h). */
#include "launcher/workerproc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/workerenv.h"

void bt_lines_flush(bt_linebuf_t *lb, int at_eof, bt_line_fn fn, void *ctx) {
  size_t start = 0;
  for (size_t i = 0; i < lb->len; i++) {
    if (lb->buf[i] != '\n') continue;
    fn(ctx, lb->buf + start, i - start);
    start = i + 1;
  }
  if ((start == 0 && lb->len == sizeof lb->buf) || (at_eof && start < lb->len)) {
    fn(ctx, lb->buf + start, lb->len - start);
    start = lb->len;
  }
  memmove(lb->buf, lb->buf + start, lb->len - start);
  lb->len -= start;
}

void bt_tail_keep(bt_tail_t *t, const char *line, size_t n) {
  if (n >= BT_WP_TAIL_LEN) n = BT_WP_TAIL_LEN - 1;
  memcpy(t->line[t->pos], line, n);
  t->line[t->pos][n] = 0;
  t->pos = (t->pos + 1) % BT_SUP_TAIL_LINES;
  if (t->n < BT_SUP_TAIL_LINES) t->n++;
}

const char *bt_tail_line(const bt_tail_t *t, int i) {
  return t->line[(t->pos - t->n + i + BT_SUP_TAIL_LINES) % BT_SUP_TAIL_LINES];
}

void bt_tail_join(const bt_tail_t *t, char *out, size_t cap) {
  if (!cap) return;
  out[0] = 0;
  /* the newest lines that fit, counted from the back */
  size_t need = 0;
  int first = t->n;
  while (first > 0) {
    size_t add = strlen(bt_tail_line(t, first - 1)) + (first < t->n ? 1 : 0);
    if (need + add + 1 > cap) break;
    need += add;
    first--;
  }
  size_t len = 0;
  for (int i = first; i < t->n; i++) {
    const char *l = bt_tail_line(t, i);
    size_t n = strlen(l);
    if (i > first) out[len++] = '\n';
    memcpy(out + len, l, n);
    len += n;
  }
  out[len] = 0;
}

void bt_wp_write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t k = write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return;
    p += k;
    n -= (size_t)k;
  }
}

void bt_stage_line_write(int fd, uint32_t stage, const char *line, size_t n) {
  char out[BT_WP_LINE_MAX + 32];
  int k = snprintf(out, sizeof out, "[stage %u] ", stage);
  if (n > sizeof out - (size_t)k - 1) n = sizeof out - (size_t)k - 1;
  memcpy(out + k, line, n);
  out[k + n] = '\n';
  bt_wp_write_all(fd, out, (size_t)k + n + 1);
}

/* 1 when kv ("NAME=value") names one of the n variables of set. */
static int in_set(const char *kv, const char *const *set, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const char *eq = strchr(set[i], '=');
    size_t len = eq ? (size_t)(eq - set[i]) + 1 : strlen(set[i]);
    if (!strncmp(kv, set[i], len)) return 1;
  }
  return 0;
}

void bt_env_free(char **env) {
  if (!env) return;
  for (size_t i = 0; env[i]; i++) free(env[i]);
  free(env);
}

char **bt_env_merge(const char *const *set, size_t n, char *const *inherited) {
  size_t ni = 0;
  while (inherited && inherited[ni]) ni++;
  char **env = calloc(n + ni + 1, sizeof *env);
  if (!env) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (!(env[k++] = strdup(set[i]))) goto fail;
  for (size_t i = 0; i < ni; i++) {
    if (bt_worker_env_is_ours(inherited[i]) || in_set(inherited[i], set, n)) continue;
    if (!(env[k++] = strdup(inherited[i]))) goto fail;
  }
  return env;
fail:
  bt_env_free(env);
  return NULL;
}

int bt_wp_spawn(uv_loop_t *loop, const bt_wp_handles_t *h, void *data, const char *file, char *const *argv,
                char *const *env, uv_exit_cb exit_cb) {
  int rc = 0, sv[2] = {-1, -1};
  /* CLOEXEC on both ends: only this worker may inherit its end (libuv dup2s
   * it to fd 3, which clears the flag in the child alone). */
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
  uv_pipe_t *pipes[3] = {h->out, h->err, h->ctl};
  int *open_flags[3] = {h->out_open, h->err_open, h->ctl_open};
  for (int i = 0; i < 3; i++) {
    if ((rc = uv_pipe_init(loop, pipes[i], 0)) < 0) goto out;
    *open_flags[i] = 1;
    pipes[i]->data = data;
  }
  if ((rc = uv_pipe_open(h->ctl, sv[0])) < 0) goto out;
  sv[0] = -1; /* the pipe handle owns it now */
  uv_stdio_container_t stdio[4] = {
      {.flags = UV_IGNORE},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)h->out},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)h->err},
      {.flags = UV_INHERIT_FD, .data.fd = sv[1]},
  };
  uv_process_options_t po = {
      .exit_cb = exit_cb,
      .file = file,
      .args = (char **)argv,
      .env = (char **)env,
      .flags = UV_PROCESS_DETACHED,
      .stdio_count = 4,
      .stdio = stdio,
  };
  h->proc->data = data;
  /* uv_spawn initialises the handle before it can fail, so even a failed
   * spawn leaves a handle to close. */
  *h->proc_open = 1;
  rc = uv_spawn(loop, h->proc, &po);
out:
  if (sv[0] >= 0) close(sv[0]);
  if (sv[1] >= 0) close(sv[1]); /* the child has its copy; ours would hide its EOF */
  return rc;
}
