/* workerproc.h - what the supervisor (sup_spawn.c) and the node agent
 * (agent.c) do alike for a worker process they spawned: split its stdout
 * and stderr into lines, forward each as "[stage S] ...", keep the last
 * lines of its stderr for the failure report, and merge its environment
 * with the launcher's own.
 *
 * And the spawn itself (bt_wp_spawn): detached, stdin on /dev/null,
 * stdout and stderr into pipes, the control socketpair on fd 3. The
 * callers own the handles and what is read from them.
 */
#ifndef BT_LAUNCHER_WORKERPROC_H
#define BT_LAUNCHER_WORKERPROC_H
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "launcher/supervisor.h"

#define BT_WP_LINE_MAX 4096 /* a longer line is forwarded in pieces */
#define BT_WP_TAIL_LEN 512  /* bytes kept of each stderr tail line */

typedef struct {
  char buf[BT_WP_LINE_MAX];
  size_t len;
} bt_linebuf_t;

/* The last BT_SUP_TAIL_LINES lines, a ring: `pos` is the next slot. */
typedef struct {
  char line[BT_SUP_TAIL_LINES][BT_WP_TAIL_LEN];
  int n, pos;
} bt_tail_t;

typedef void (*bt_line_fn)(void *ctx, const char *line, size_t n);

/* Hands every complete line in lb to fn (without its newline) and keeps
 * the rest. A full buffer without a newline, or the last bytes before EOF
 * (at_eof), still make a line rather than being lost. */
void bt_lines_flush(bt_linebuf_t *lb, int at_eof, bt_line_fn fn, void *ctx);

void bt_tail_keep(bt_tail_t *t, const char *line, size_t n);
/* The i-th kept line, oldest first (i < t->n). */
const char *bt_tail_line(const bt_tail_t *t, int i);
/* The kept lines joined by "\n", oldest first; when they do not fit in
 * cap bytes the oldest go first (the newest say why it failed). */
void bt_tail_join(const bt_tail_t *t, char *out, size_t cap);

/* Writes "[stage S] line\n" to fd in one write(2), so lines of different
 * stages never interleave (cut to BT_WP_LINE_MAX). */
void bt_stage_line_write(int fd, uint32_t stage, const char *line, size_t n);

/* write(2) until done; EINTR retried, other errors dropped (the output of
 * a worker must never stop the launcher). */
void bt_wp_write_all(int fd, const char *p, size_t n);

/* A worker's environment: `set` (n strings "NAME=value", the variables
 * the launcher decides) first, then every inherited variable whose name
 * is neither in `set` nor one of common/workerenv.h's (a stale RANK from
 * an outer launcher must not win). Returns a NULL-terminated array of
 * copies (free with bt_env_free), or NULL when out of memory. */
char **bt_env_merge(const char *const *set, size_t n, char *const *inherited);
void bt_env_free(char **env);

/* A worker's handles and their "still open" flags (owned by the caller). */
typedef struct {
  uv_process_t *proc;
  uv_pipe_t *out, *err, *ctl;
  int *proc_open, *out_open, *err_open, *ctl_open;
} bt_wp_handles_t;

/* Spawns `file` with argv and env in its own session (UV_PROCESS_DETACHED),
 * stdin /dev/null, stdout and stderr into h->out and h->err, and one end
 * of a control socketpair on fd 3 (the other is h->ctl; both are CLOEXEC,
 * so only this child inherits its end). Every handle gets `data`. Sets
 * the open flag of each handle it initialised, also on failure (the
 * caller closes what is open). Reads nothing yet. 0 or a negative code. */
int bt_wp_spawn(uv_loop_t *loop, const bt_wp_handles_t *h, void *data, const char *file, char *const *argv,
                char *const *env, uv_exit_cb exit_cb);

#endif
