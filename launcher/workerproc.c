/* workerproc.c - line forwarding, stderr tails and environment merging for
 * spawned workers, shared by the supervisor and the node agent (see
 * workerproc.h). */
#include "launcher/workerproc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
