/* agent.c - the node agent (see agent.h): the join handshake with blocking
 * I/O and poll deadlines, then one libuv loop that beats, spawns workers on
 * the coordinator's SPAWN, relays their control channels both ways as
 * NODE_CTL, forwards their output as "[stage S] ..." and reports each
 * finished worker with NODE_EXITED.
 *
 * What it is not: a supervisor. It never restarts, times out or judges a
 * worker (the coordinator does, from the relayed control bytes); the only
 * decisions taken here are the ones the coordinator cannot take because it
 * is gone: kill everything and leave (81).
 */
#include "launcher/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/exitcodes.h"
#include "common/frame.h"
#include "launcher/workerproc.h"

extern char **environ;

#define CTL_CHUNK 65536         /* NODE_CTL data per message, at most */
#define DRAIN_MS 1000           /* after a worker's exit, how long its pipes may stay open */
#define END_WAIT_MS 5000        /* how long killed workers may take to be reaped */
#define RETRY_MS 500            /* between two attempts to reach the coordinator */
#define MAX_ARGS 65536          /* SPAWN's argc + envc, at most */
#define PROBE_MAX 256

typedef struct agent agent_t;

typedef struct aworker {
  agent_t *a;
  struct aworker *next;
  uint32_t inc, stage;
  int pid;
  uv_process_t proc;
  uv_pipe_t out, err, ctl;
  uv_timer_t drain;
  int proc_open, out_open, err_open, ctl_open, drain_open; /* handle not yet closed */
  int out_eof, err_eof, ctl_eof; /* nothing more will be read from it */
  int exited, reported;
  int64_t status;
  int term_signal;
  bt_linebuf_t lout, lerr;
  bt_tail_t tail;
  uint8_t cbuf[CTL_CHUNK];
} aworker_t;

struct agent {
  const bt_agent_opts_t *o;
  char where[300];        /* "HOST:PORT" of the coordinator, for messages */
  uv_loop_t loop;
  uv_tcp_t conn;
  uv_timer_t beat, watch, endwait;
  uv_signal_t sigterm, sigint, sigusr1;
  int conn_open, beat_open, watch_open, endwait_open, sig_open;
  uint8_t *rx;            /* frames from the coordinator */
  size_t rxlen, rxcap;
  int64_t beat_ms, timeout_ms;
  int64_t seq;
  aworker_t *workers;
  int ending, code;
  char endmsg[1400];      /* printed once the workers are gone */
  int signals_seen;
  char exe_name[PATH_MAX];
};

/* ---- small helpers ---- */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char line[1600];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (k < 0) return;
  if ((size_t)k > sizeof line - 2) k = (int)sizeof line - 2;
  line[k++] = '\n';
  bt_wp_write_all(STDERR_FILENO, line, (size_t)k);
}

/* Text from the other side goes into one line of ours: no control bytes. */
static void printable(char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

static int64_t mono_ms(void) { return (int64_t)(uv_hrtime() / 1000000u); }

/* ---- the handshake: blocking I/O, every step with a deadline ---- */

/* One connection attempt to host:port within deadline (mono_ms). Returns
 * the socket (non-blocking, close-on-exec: no worker may inherit it) or -1
 * with the reason in err. */
static int connect_once(const char *host, int port, int64_t deadline, char *err, size_t errlen) {
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  int g = getaddrinfo(host, portstr, &hints, &res);
  if (g) {
    snprintf(err, errlen, "%s", g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
    return -1;
  }
  int fd = -1;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      snprintf(err, errlen, "socket: %s", strerror(errno));
      continue;
    }
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc < 0 && (errno == EINPROGRESS || errno == EINTR)) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      int64_t left;
      for (;;) {
        left = deadline - mono_ms();
        if (left <= 0) break;
        int pr = poll(&p, 1, (int)(left > INT_MAX ? INT_MAX : left));
        if (pr < 0 && errno == EINTR) continue;
        break;
      }
      int soerr = ETIMEDOUT;
      socklen_t sl = sizeof soerr;
      if (left > 0 && (p.revents & (POLLOUT | POLLERR | POLLHUP)) &&
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        soerr = errno;
      rc = soerr ? -1 : 0;
      errno = soerr;
    }
    if (rc == 0) break;
    snprintf(err, errlen, "%s", strerror(errno));
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

static int send_all(int fd, const uint8_t *p, size_t n, int64_t deadline) {
  while (n > 0) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k > 0) {
      p += k;
      n -= (size_t)k;
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
    int64_t left = deadline - mono_ms();
    if (left <= 0) return BT_ETIMEOUT;
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    if (poll(&pf, 1, (int)(left > INT_MAX ? INT_MAX : left)) < 0 && errno != EINTR) return -errno;
  }
  return 0;
}

static int send_node(int fd, uint16_t type, const bt_node_msg_t *m, int64_t deadline) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_node_encode(&b, type, m);
  int rc = b.err ? b.err : send_all(fd, b.data, b.len, deadline);
  bt_buf_free(&b);
  return rc;
}

/* Reads one BT_NODE_* frame into m (its data points into a->rx, valid
 * until the next read) and drops it from a->rx; bytes after it stay for
 * the loop. */
static int recv_node(agent_t *a, int fd, int64_t deadline, uint16_t *type, bt_node_msg_t *m, size_t *used) {
  if (*used) {
    memmove(a->rx, a->rx + *used, a->rxlen - *used);
    a->rxlen -= *used;
    *used = 0;
  }
  for (;;) {
    bt_frame_t f;
    long n = bt_frame_parse(a->rx, a->rxlen, &f);
    if (n < 0) return (int)n;
    if (n > 0) {
      int rc = bt_node_decode(&f, m);
      if (rc < 0) return rc;
      *type = f.type;
      *used = (size_t)n;
      return 0;
    }
    if (a->rxlen == a->rxcap) return BT_EFORMAT;
    int64_t left = deadline - mono_ms();
    if (left <= 0) return BT_ETIMEOUT;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int pr = poll(&pf, 1, (int)(left > INT_MAX ? INT_MAX : left));
    if (pr < 0 && errno != EINTR) return -errno;
    if (pr <= 0) continue;
    ssize_t k = recv(fd, a->rx + a->rxlen, a->rxcap - a->rxlen, 0);
    if (k == 0) return BT_EPEER; /* the coordinator closed the connection */
    if (k < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return -errno;
    }
    a->rxlen += (size_t)k;
  }
}

/* The probe file's content (DESIGN: every node must reach the checkpoint
 * directory; the coordinator wrote this file there and compares). */
static int read_probe(const agent_t *a, const char *name, char *out, size_t cap) {
  out[0] = 0;
  if (!name[0] || !a->o->ckpt_dir) return 0;
  if (strchr(name, '/') || strstr(name, "..")) return BT_EFORMAT;
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s", a->o->ckpt_dir, name) >= (int)sizeof path) return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) return 0; /* unreadable: "" tells the coordinator this node cannot reach it */
  size_t got = 0, want = cap - 1 < PROBE_MAX ? cap - 1 : PROBE_MAX;
  while (got < want) {
    ssize_t k = read(fd, out + got, want - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += (size_t)k;
  }
  close(fd);
  out[got] = 0;
  return 0;
}

/* Connects and joins; returns the connected socket or a negative code,
 * having printed the one line that says why. On success the WELCOME's
 * deadlines are in a. */
static int join(agent_t *a) {
  const bt_agent_opts_t *o = a->o;
  double hs_s = o->handshake_s > 0 ? o->handshake_s : 10;
  int64_t hs_ms = (int64_t)(hs_s * 1000);
  int64_t join_deadline = mono_ms() + (int64_t)(o->join_timeout_s * 1000);
  char err[256] = "no attempt made";
  int fd;
  for (;;) {
    /* an attempt may overrun the join deadline a little, so the last one
     * at the deadline still gets an answer (refused, unreachable) */
    int64_t now = mono_ms(), d = now + hs_ms, last = join_deadline > now + 200 ? join_deadline : now + 200;
    if (d > last) d = last;
    if ((fd = connect_once(o->rdzv_host, o->rdzv_port, d, err, sizeof err)) >= 0) break;
    int64_t left = join_deadline - mono_ms();
    if (left <= 0) {
      say("baton run: node %u: could not reach the coordinator at %s within %g s: %s", o->node_rank,
          a->where, o->join_timeout_s, err);
      return BT_ETIMEOUT;
    }
    bt_sleep_ms(left < RETRY_MS ? left : RETRY_MS); /* the last attempt is at the deadline */
  }
  char ctx[560]; /* job id (<= 512 bytes, check_opts) and rank */
  snprintf(ctx, sizeof ctx, "%s %u", o->job_id, o->node_rank);
  bt_node_msg_t m;
  uint16_t type = 0;
  size_t used = 0;
  uint8_t cnonce[BT_NONCE_LEN], snonce[BT_NONCE_LEN], proof[BT_SHA256_LEN];
  const char *step = "HELLO";
  int rc = bt_random_bytes(cnonce, sizeof cnonce);
  if (rc < 0) goto fail;
  memset(&m, 0, sizeof m);
  m.node = o->node_rank;
  snprintf(m.text, sizeof m.text, "%s", o->job_id);
  memcpy(m.nonce, cnonce, sizeof cnonce);
  if ((rc = send_node(fd, BT_NODE_HELLO, &m, mono_ms() + hs_ms)) < 0) goto fail;
  step = "CHALLENGE";
  if ((rc = recv_node(a, fd, mono_ms() + hs_ms, &type, &m, &used)) < 0) goto fail;
  if (type == BT_NODE_REFUSE) goto refused;
  if (type != BT_NODE_CHALLENGE) goto unexpected;
  memcpy(snonce, m.nonce, sizeof snonce);
  bt_auth_proof(o->secret, "baton-coord", ctx, cnonce, snonce, proof);
  if (!bt_ct_equal(proof, m.proof, sizeof proof)) {
    say("baton run: node %u: the coordinator at %s does not hold this job's secret (%s)", o->node_rank, a->where,
        o->secret->source);
    rc = BT_ECONFIG;
    goto out;
  }
  memset(&m, 0, sizeof m);
  m.node = o->node_rank;
  bt_auth_proof(o->secret, "baton-node", ctx, snonce, cnonce, m.proof);
  step = "AUTH";
  if ((rc = send_node(fd, BT_NODE_AUTH, &m, mono_ms() + hs_ms)) < 0) goto fail;
  step = "WELCOME";
  if ((rc = recv_node(a, fd, mono_ms() + hs_ms, &type, &m, &used)) < 0) goto fail;
  if (type == BT_NODE_REFUSE) goto refused;
  if (type != BT_NODE_WELCOME) goto unexpected;
  if (m.num[0] < 1 || m.num[0] > 3600 * 1000 || m.num[1] < 1 || m.num[1] > INT64_C(1) << 40) {
    rc = BT_EFORMAT;
    goto fail;
  }
  a->beat_ms = m.num[0];
  a->timeout_ms = m.num[1];
  char probe_name[sizeof m.text];
  snprintf(probe_name, sizeof probe_name, "%s", m.text);
  memset(&m, 0, sizeof m);
  if (read_probe(a, probe_name, m.text2, sizeof m.text2) < 0) {
    printable(probe_name);
    say("baton run: node %u: the coordinator at %s named a probe file outside the checkpoint directory: '%s'",
        o->node_rank, a->where, probe_name);
    rc = BT_EFORMAT;
    goto out;
  }
  m.node = o->node_rank;
  m.num[0] = o->slots;
  m.num[1] = (int64_t)getpid();
  if (o->data_host) {
    snprintf(m.text, sizeof m.text, "%s", o->data_host);
  } else {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    const void *ip = NULL;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
      if (ss.ss_family == AF_INET) ip = &((struct sockaddr_in *)&ss)->sin_addr;
      else if (ss.ss_family == AF_INET6) ip = &((struct sockaddr_in6 *)&ss)->sin6_addr;
    }
    if (!ip || !inet_ntop(ss.ss_family, ip, m.text, sizeof m.text)) {
      rc = -errno;
      step = "JOIN (this node's address)";
      goto fail;
    }
  }
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  m.data = (const uint8_t *)host;
  m.dlen = (uint32_t)strlen(host);
  step = "JOIN";
  if ((rc = send_node(fd, BT_NODE_JOIN, &m, mono_ms() + hs_ms)) < 0) goto fail;
  /* what came after the WELCOME stays in a->rx for the loop */
  memmove(a->rx, a->rx + used, a->rxlen - used);
  a->rxlen -= used;
  return fd;
refused:
  printable(m.text);
  say("baton run: node %u: the coordinator at %s refused this node: %s", o->node_rank, a->where, m.text);
  rc = BT_ECONFIG;
  goto out;
unexpected:
  say("baton run: node %u: could not join the coordinator at %s: %s instead of %s", o->node_rank, a->where,
      bt_msg_type_name(type), step);
  rc = BT_EFORMAT;
  goto out;
fail:
  say("baton run: node %u: could not join the coordinator at %s: %s: %s", o->node_rank, a->where, step,
      rc == BT_EPEER ? "the connection closed" : bt_strerror(rc));
out:
  close(fd);
  return rc;
}

/* ---- the loop: talking to the coordinator ---- */

static void begin_end(agent_t *a, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void lost(agent_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void on_written(uv_write_t *req, int status) {
  (void)status; /* a broken connection shows up as a read error */
  free(req);
}

/* Queues one whole frame to the coordinator (the stream keeps the order:
 * a worker's NODE_CTL bytes always go before its NODE_EXITED). */
static void send_msg(agent_t *a, uint16_t type, const bt_node_msg_t *m) {
  if (a->ending || !a->conn_open) return;
  bt_node_msg_t mine = *m;
  mine.node = a->o->node_rank; /* every message names its node */
  bt_buf_t b;
  bt_buf_init(&b);
  bt_node_encode(&b, type, &mine);
  if (b.err) {
    int err = b.err;
    bt_buf_free(&b);
    lost(a, "cannot encode %s: %s", bt_msg_type_name(type), bt_strerror(err));
    return;
  }
  uv_write_t *req = malloc(sizeof *req + b.len);
  if (!req) {
    bt_buf_free(&b);
    lost(a, "out of memory for a message");
    return;
  }
  memcpy(req + 1, b.data, b.len);
  uv_buf_t ub = uv_buf_init((char *)(req + 1), (unsigned)b.len);
  bt_buf_free(&b);
  int rc = uv_write(req, (uv_stream_t *)&a->conn, &ub, 1, on_written);
  if (rc < 0) {
    free(req);
    lost(a, "write: %s", uv_strerror(rc));
  }
}

/* ---- workers ---- */

static void kill_worker(aworker_t *w) {
  if (w->pid <= 0 || w->exited) return;
  /* the group (it is a session leader) and the pid: right after uv_spawn
   * the child may not have reached setsid() yet */
  kill(-w->pid, SIGKILL);
  kill(w->pid, SIGKILL);
}

static void maybe_free(aworker_t *w) {
  if (!w->reported || w->proc_open || w->out_open || w->err_open || w->ctl_open || w->drain_open) return;
  agent_t *a = w->a;
  for (aworker_t **pp = &a->workers; *pp; pp = &(*pp)->next)
    if (*pp == w) {
      *pp = w->next;
      break;
    }
  free(w);
  if (a->ending && !a->workers) {
    /* the last worker is gone: nothing keeps the loop but the wait timer */
    if (a->endwait_open) uv_close((uv_handle_t *)&a->endwait, NULL), a->endwait_open = 0;
  }
}

static void on_w_closed(uv_handle_t *h) {
  aworker_t *w = h->data;
  if (h == (uv_handle_t *)&w->proc) w->proc_open = 0;
  else if (h == (uv_handle_t *)&w->out) w->out_open = 0;
  else if (h == (uv_handle_t *)&w->err) w->err_open = 0;
  else if (h == (uv_handle_t *)&w->ctl) w->ctl_open = 0;
  else if (h == (uv_handle_t *)&w->drain) w->drain_open = 0;
  maybe_free(w);
}

static void w_close(aworker_t *w, uv_handle_t *h, int open) {
  if (open && !uv_is_closing(h)) uv_close(h, on_w_closed);
}

/* Done when it exited and its pipes are at EOF (or the drain gave up on
 * them): then NODE_EXITED, after every NODE_CTL it caused. */
static void check_finished(aworker_t *w) {
  if (w->reported || !w->exited || !w->out_eof || !w->err_eof || !w->ctl_eof) return;
  w->reported = 1;
  /* leftovers of its group must not outlive it */
  kill(-w->pid, SIGKILL);
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.inc = w->inc;
  m.stage = w->stage;
  m.num[0] = w->status;
  m.num[1] = w->term_signal;
  bt_tail_join(&w->tail, m.text, sizeof m.text);
  send_msg(w->a, BT_NODE_EXITED, &m);
  w_close(w, (uv_handle_t *)&w->drain, w->drain_open);
  maybe_free(w);
}

static void out_line(void *ctx, const char *line, size_t n);
static void err_line(void *ctx, const char *line, size_t n);

static void out_line(void *ctx, const char *line, size_t n) {
  aworker_t *w = ctx;
  bt_stage_line_write(STDOUT_FILENO, w->stage, line, n);
}

static void err_line(void *ctx, const char *line, size_t n) {
  aworker_t *w = ctx;
  bt_stage_line_write(STDERR_FILENO, w->stage, line, n);
  bt_tail_keep(&w->tail, line, n);
}

static void pipe_eof(aworker_t *w, int is_err) {
  if (is_err ? w->err_eof : w->out_eof) return;
  bt_lines_flush(is_err ? &w->lerr : &w->lout, 1, is_err ? err_line : out_line, w);
  if (is_err) {
    w->err_eof = 1;
    w_close(w, (uv_handle_t *)&w->err, w->err_open);
  } else {
    w->out_eof = 1;
    w_close(w, (uv_handle_t *)&w->out, w->out_open);
  }
}

static void on_out_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  aworker_t *w = h->data;
  bt_linebuf_t *lb = h == (uv_handle_t *)&w->err ? &w->lerr : &w->lout;
  *buf = uv_buf_init(lb->buf + lb->len, (unsigned)(sizeof lb->buf - lb->len));
}

static void on_out_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  aworker_t *w = st->data;
  int is_err = st == (uv_stream_t *)&w->err;
  if (nread < 0) {
    pipe_eof(w, is_err);
    check_finished(w);
    return;
  }
  bt_linebuf_t *lb = is_err ? &w->lerr : &w->lout;
  lb->len += (size_t)nread;
  bt_lines_flush(lb, 0, is_err ? err_line : out_line, w);
}

static void ctl_eof(aworker_t *w) {
  if (w->ctl_eof) return;
  w->ctl_eof = 1;
  w_close(w, (uv_handle_t *)&w->ctl, w->ctl_open);
}

static void on_ctl_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  aworker_t *w = h->data;
  *buf = uv_buf_init((char *)w->cbuf, sizeof w->cbuf);
}

static void on_ctl_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  aworker_t *w = st->data;
  if (nread < 0) {
    ctl_eof(w);
    check_finished(w);
    return;
  }
  if (nread == 0) return;
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.inc = w->inc;
  m.stage = w->stage;
  m.data = (const uint8_t *)buf->base;
  m.dlen = (uint32_t)nread;
  send_msg(w->a, BT_NODE_CTL, &m);
}

/* The worker is gone but something still holds a pipe open (a process
 * that left its group): stop waiting for that EOF. */
static void on_drain(uv_timer_t *t) {
  aworker_t *w = t->data;
  pipe_eof(w, 0);
  pipe_eof(w, 1);
  ctl_eof(w);
  check_finished(w);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int term_signal) {
  aworker_t *w = p->data;
  w->exited = 1;
  w->status = status;
  w->term_signal = term_signal;
  /* what it forked is in its group; it must not hold our pipes open */
  kill(-w->pid, SIGKILL);
  w_close(w, (uv_handle_t *)p, w->proc_open);
  if (!w->reported && w->drain_open) {
    uv_timer_start(&w->drain, on_drain, DRAIN_MS, 0);
  }
  check_finished(w);
}

static void report_not_started(agent_t *a, uint32_t inc, uint32_t stage, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void report_not_started(agent_t *a, uint32_t inc, uint32_t stage, const char *fmt, ...) {
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.inc = inc;
  m.stage = stage;
  m.num[2] = 1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m.text, sizeof m.text, fmt, ap);
  va_end(ap);
  say("baton run: node %u: cannot start stage %u: %s", a->o->node_rank, stage, m.text);
  send_msg(a, BT_NODE_EXITED, &m);
}

/* Splits SPAWN's data into exactly argc + envc NUL-terminated strings. */
static int split_strings(const bt_node_msg_t *m, const char **out, size_t want) {
  size_t k = 0, start = 0;
  if (!m->dlen || m->data[m->dlen - 1] != 0) return BT_EFORMAT;
  for (size_t i = 0; i < m->dlen; i++) {
    if (m->data[i]) continue;
    if (k == want) return BT_EFORMAT;
    out[k++] = (const char *)m->data + start;
    start = i + 1;
  }
  return k == want ? 0 : BT_EFORMAT;
}

static int has_name(const char *kv, const char *name) {
  size_t n = strlen(name);
  return !strncmp(kv, name, n) && kv[n] == '=';
}

static int spawn_worker(agent_t *a, aworker_t *w, const char **argv, const char **envv, size_t envc,
                        const char *label, char *why, size_t whylen) {
  int rc = 0;
  char **env = NULL;
  const char **set = calloc(envc + 2, sizeof *set);
  char pidvar[64], tokvar[32 + 2 * BT_SHA256_LEN + 1];
  if (!set) {
    rc = -ENOMEM;
    goto out;
  }
  size_t n = 0;
  for (size_t i = 0; i < envc; i++) {
    if (has_name(envv[i], "BATON_SUPERVISOR_PID")) continue;
    if (label[0] && has_name(envv[i], "BATON_JOB_TOKEN")) continue;
    set[n++] = envv[i];
  }
  /* the worker checks that its parent is its supervisor: here, this agent */
  snprintf(pidvar, sizeof pidvar, "BATON_SUPERVISOR_PID=%ld", (long)getpid());
  set[n++] = pidvar;
  if (label[0]) {
    /* the data-plane token is derived here, never sent */
    char hex[2 * BT_SHA256_LEN + 1];
    bt_auth_derive_hex(a->o->secret, label, hex);
    snprintf(tokvar, sizeof tokvar, "BATON_JOB_TOKEN=%s", hex);
    set[n++] = tokvar;
  }
  /* bt_worker_env_is_ours also keeps BATON_SECRET and BATON_SECRET_FILE
   * from the worker: it needs only the token derived above */
  if (!(env = bt_env_merge(set, n, environ))) {
    rc = -ENOMEM;
    goto out;
  }
  if ((rc = uv_timer_init(&a->loop, &w->drain)) < 0) goto out;
  w->drain_open = 1;
  w->drain.data = w;
  argv[0] = a->exe_name;
  bt_wp_handles_t h = {&w->proc, &w->out, &w->err, &w->ctl, &w->proc_open, &w->out_open, &w->err_open, &w->ctl_open};
  if ((rc = bt_wp_spawn(&a->loop, &h, w, a->o->worker_exe ? a->o->worker_exe : "/proc/self/exe", (char *const *)argv,
                        env, on_exit_cb)) < 0)
    goto out;
  w->pid = w->proc.pid;
  uv_read_start((uv_stream_t *)&w->out, on_out_alloc, on_out_read);
  uv_read_start((uv_stream_t *)&w->err, on_out_alloc, on_out_read);
  uv_read_start((uv_stream_t *)&w->ctl, on_ctl_alloc, on_ctl_read);
out:
  bt_env_free(env);
  free(set);
  if (rc < 0) {
    snprintf(why, whylen, "%s", bt_strerror(rc)); /* libuv's codes are -errno here */
    /* not reported over the wire as a worker: the caller sends EXITED */
    w->reported = 1;
    w->exited = 1;
    w_close(w, (uv_handle_t *)&w->proc, w->proc_open);
    w_close(w, (uv_handle_t *)&w->out, w->out_open);
    w_close(w, (uv_handle_t *)&w->err, w->err_open);
    w_close(w, (uv_handle_t *)&w->ctl, w->ctl_open);
    w_close(w, (uv_handle_t *)&w->drain, w->drain_open);
  }
  return rc;
}

static aworker_t *find_worker(agent_t *a, uint32_t inc, uint32_t stage) {
  for (aworker_t *w = a->workers; w; w = w->next)
    if (!w->reported && w->inc == inc && w->stage == stage) return w;
  return NULL;
}

static void on_spawn(agent_t *a, const bt_node_msg_t *m) {
  int64_t argc = m->num[0], envc = m->num[1];
  if (argc < 1 || envc < 0 || argc + envc > MAX_ARGS) {
    report_not_started(a, m->inc, m->stage, "malformed SPAWN: argc %lld, envc %lld", (long long)argc,
                       (long long)envc);
    return;
  }
  if (find_worker(a, m->inc, m->stage)) {
    report_not_started(a, m->inc, m->stage, "incarnation %u stage %u is already running on this node", m->inc,
                       m->stage);
    return;
  }
  const char **strs = calloc((size_t)(argc + envc + 1), sizeof *strs);
  if (!strs) {
    report_not_started(a, m->inc, m->stage, "out of memory");
    return;
  }
  if (split_strings(m, strs, (size_t)(argc + envc)) < 0) {
    report_not_started(a, m->inc, m->stage, "malformed SPAWN: the data is not %lld NUL-terminated strings",
                       (long long)(argc + envc));
    free(strs);
    return;
  }
  for (int64_t i = argc; i < argc + envc; i++) {
    const char *eq = strchr(strs[i], '=');
    if (!eq || eq == strs[i]) {
      report_not_started(a, m->inc, m->stage, "malformed SPAWN: environment entry %lld is not NAME=value",
                         (long long)(i - argc));
      free(strs);
      return;
    }
  }
  /* argv: the first argc strings, then NULL (envs are copied by the merge) */
  const char **argv = calloc((size_t)argc + 1, sizeof *argv);
  aworker_t *w = calloc(1, sizeof *w);
  if (!argv || !w) {
    free(argv);
    free(w);
    free(strs);
    report_not_started(a, m->inc, m->stage, "out of memory");
    return;
  }
  memcpy(argv, strs, (size_t)argc * sizeof *argv);
  w->a = a;
  w->inc = m->inc;
  w->stage = m->stage;
  w->next = a->workers;
  a->workers = w;
  char why[256];
  int rc = spawn_worker(a, w, argv, strs + argc, (size_t)envc, m->text2, why, sizeof why);
  free(argv);
  free(strs);
  if (rc < 0) {
    report_not_started(a, m->inc, m->stage, "could not be started: %s", why);
    maybe_free(w);
    return;
  }
  bt_node_msg_t r;
  memset(&r, 0, sizeof r);
  r.inc = w->inc;
  r.stage = w->stage;
  r.num[0] = w->pid;
  send_msg(a, BT_NODE_SPAWNED, &r);
}

static void on_written_ctl(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void on_ctl_from_coord(agent_t *a, const bt_node_msg_t *m) {
  aworker_t *w = find_worker(a, m->inc, m->stage);
  if (!w || w->ctl_eof || !m->dlen) return; /* a worker that is gone: the coordinator hears its EXITED */
  uv_write_t *req = malloc(sizeof *req + m->dlen);
  if (!req) return;
  memcpy(req + 1, m->data, m->dlen);
  uv_buf_t ub = uv_buf_init((char *)(req + 1), m->dlen);
  if (uv_write(req, (uv_stream_t *)&w->ctl, &ub, 1, on_written_ctl) < 0) free(req);
}

static void on_kill(agent_t *a, const bt_node_msg_t *m) {
  for (aworker_t *w = a->workers; w; w = w->next)
    if (m->stage == BT_NODE_ALL || (w->inc == m->inc && w->stage == m->stage)) kill_worker(w);
}

/* ---- ending ---- */

static void on_endwait(uv_timer_t *t) {
  agent_t *a = t->data;
  int left = 0;
  for (aworker_t *w = a->workers; w; w = w->next) left += !w->exited;
  if (left)
    say("baton run: node %u: %d worker(s) not reaped %d ms after SIGKILL; leaving", a->o->node_rank, left,
        END_WAIT_MS);
  uv_close((uv_handle_t *)&a->endwait, NULL);
  a->endwait_open = 0;
  /* stop waiting for pipes: the walk in bt_agent_run closes the rest */
  uv_stop(&a->loop);
}

static void close_conn_side(agent_t *a) {
  if (a->conn_open) uv_close((uv_handle_t *)&a->conn, NULL), a->conn_open = 0;
  if (a->beat_open) uv_close((uv_handle_t *)&a->beat, NULL), a->beat_open = 0;
  if (a->watch_open) uv_close((uv_handle_t *)&a->watch, NULL), a->watch_open = 0;
}

/* Stops this node: every worker gets SIGKILL, the connection closes, and
 * the loop ends once they are reaped (or END_WAIT_MS passed); then the
 * message is printed and `code` returned. */
static void begin_end(agent_t *a, int code, const char *fmt, ...) {
  if (a->ending) return;
  a->code = code;
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->endmsg, sizeof a->endmsg, fmt, ap);
    va_end(ap);
  }
  a->ending = 1;
  for (aworker_t *w = a->workers; w; w = w->next) kill_worker(w);
  close_conn_side(a);
  if (a->workers && uv_timer_init(&a->loop, &a->endwait) == 0) {
    a->endwait_open = 1;
    a->endwait.data = a;
    uv_timer_start(&a->endwait, on_endwait, END_WAIT_MS, 0);
  }
}

static void lost(agent_t *a, const char *fmt, ...) {
  char why[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  begin_end(a, BT_EXIT_COORD_LOST,
            "baton run: node %u: lost the coordinator at %s (%s): stopped this node's workers; rerun the same "
            "command on every node to resume",
            a->o->node_rank, a->where, why);
}

/* ---- the coordinator's messages ---- */

static void on_watch(uv_timer_t *t) {
  agent_t *a = t->data;
  lost(a, "no message for %lld ms", (long long)a->timeout_ms);
}

static void on_beat(uv_timer_t *t) {
  agent_t *a = t->data;
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.node = a->o->node_rank;
  m.num[0] = ++a->seq;
  send_msg(a, BT_NODE_BEAT, &m);
}

static void handle_frame(agent_t *a, const bt_frame_t *f) {
  bt_node_msg_t m;
  int rc = bt_node_decode(f, &m);
  if (rc < 0) {
    lost(a, "a malformed %s message: %s", bt_msg_type_name(f->type), bt_strerror(rc));
    return;
  }
  uv_timer_again(&a->watch); /* any frame is a sign of life */
  switch (f->type) {
  case BT_NODE_BEAT: break;
  case BT_NODE_SPAWN: on_spawn(a, &m); break;
  case BT_NODE_CTL: on_ctl_from_coord(a, &m); break;
  case BT_NODE_KILL: on_kill(a, &m); break;
  case BT_NODE_BYE:
    if (m.num[0] < 0 || m.num[0] > 255) {
      lost(a, "BYE with exit code %lld", (long long)m.num[0]);
      break;
    }
    printable(m.text);
    if (m.text[0]) begin_end(a, (int)m.num[0], "%s", m.text);
    else begin_end(a, (int)m.num[0], NULL);
    break;
  case BT_NODE_REFUSE:
    printable(m.text);
    begin_end(a, BT_EXIT_RENDEZVOUS, "baton run: node %u: the coordinator at %s refused this node: %s",
              a->o->node_rank, a->where, m.text);
    break;
  default: lost(a, "an unexpected %s message", bt_msg_type_name(f->type)); break;
  }
}

/* Parses and handles every whole frame in a->rx. */
static void drain_rx(agent_t *a) {
  size_t off = 0;
  while (off < a->rxlen && !a->ending) {
    bt_frame_t f;
    long n = bt_frame_parse(a->rx + off, a->rxlen - off, &f);
    if (n == 0) break;
    if (n < 0) {
      lost(a, "a malformed frame: %s", bt_strerror((int)n));
      break;
    }
    handle_frame(a, &f);
    off += (size_t)n;
  }
  memmove(a->rx, a->rx + off, a->rxlen - off);
  a->rxlen -= off;
}

static void on_conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  agent_t *a = h->data;
  /* a->rx holds one whole frame at most (bt_frame_parse refuses longer) */
  *buf = uv_buf_init((char *)a->rx + a->rxlen, (unsigned)(a->rxcap - a->rxlen));
}

static void on_conn_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  agent_t *a = st->data;
  if (nread < 0) {
    lost(a, "%s", nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
    return;
  }
  a->rxlen += (size_t)nread;
  drain_rx(a);
}

static void on_signal(uv_signal_t *h, int signum) {
  agent_t *a = h->data;
  a->signals_seen++;
  if (a->signals_seen == 1) {
    say("baton run: node %u: %s: left to the coordinator, which stops the whole job (a second SIGTERM or "
        "SIGINT stops this node now)",
        a->o->node_rank, strsignal(signum));
    return;
  }
  if (signum == SIGUSR1) return;
  begin_end(a, 128 + signum, "baton run: node %u: stopped by a second signal (%s): this node's workers were killed",
            a->o->node_rank, strsignal(signum));
}

/* The last sweep: worker handles close without their callback (the
 * workers are freed right after), the agent's own handles likewise. */
static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* The options a caller could get wrong: one line, and BT_EXIT_USAGE. */
static int check_opts(const bt_agent_opts_t *o) {
  const char *bad = NULL;
  if (!o->rdzv_host || !o->rdzv_host[0] || strlen(o->rdzv_host) > 255) bad = "a rendezvous host (at most 255 bytes)";
  else if (o->rdzv_port < 1 || o->rdzv_port > 65535) bad = "a rendezvous port in 1..65535";
  else if (o->node_rank == 0 || o->node_rank == BT_NODE_ALL) bad = "a node rank > 0 (rank 0 coordinates)";
  else if (!o->job_id || !o->job_id[0] || strlen(o->job_id) > 512) bad = "a job id (1 to 512 bytes)";
  else if (!o->secret || o->secret->len < BT_SECRET_MIN) bad = "the job secret";
  else if (o->slots < 1 || o->slots > BT_MAX_STAGES) bad = "slots in 1..256";
  else if (o->data_host && (!o->data_host[0] || strlen(o->data_host) >= BT_ADDR_MAX)) bad = "a data host under 128 bytes";
  else if (!(o->join_timeout_s >= 0 && o->join_timeout_s < 1e9)) bad = "a join timeout >= 0 s";
  if (!bad) return 0;
  say("baton run: node %u: the node agent needs %s", o->node_rank, bad);
  return BT_EARG;
}

int bt_agent_run(const bt_agent_opts_t *o) {
  if (check_opts(o) < 0) return BT_EXIT_USAGE;
  agent_t *a = calloc(1, sizeof *a);
  if (!a) {
    say("baton run: node %u: out of memory", o->node_rank);
    return BT_EXIT_FAILED;
  }
  a->o = o;
  snprintf(a->where, sizeof a->where, "%s:%d", o->rdzv_host, o->rdzv_port);
  a->rxcap = BT_FRAME_HEADER + BT_FRAME_MAX_PAYLOAD + BT_FRAME_TRAILER;
  a->rx = malloc(a->rxcap);
  if (!a->rx) {
    free(a);
    say("baton run: node %u: out of memory", o->node_rank);
    return BT_EXIT_FAILED;
  }
  ssize_t k = readlink("/proc/self/exe", a->exe_name, sizeof a->exe_name - 1);
  if (o->worker_exe) snprintf(a->exe_name, sizeof a->exe_name, "%s", o->worker_exe);
  else if (k <= 0) snprintf(a->exe_name, sizeof a->exe_name, "/proc/self/exe");
  /* a write to a closed connection must be EPIPE, not our death */
  struct sigaction ign, old_pipe;
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ign, &old_pipe);

  int code = BT_EXIT_RENDEZVOUS;
  int fd = join(a);
  if (fd < 0) goto out;
  int rc = uv_loop_init(&a->loop);
  if (rc < 0) {
    close(fd);
    say("baton run: node %u: cannot start the event loop: %s", o->node_rank, uv_strerror(rc));
    code = BT_EXIT_FAILED;
    goto out;
  }
  uv_tcp_init(&a->loop, &a->conn);
  a->conn.data = a;
  a->conn_open = 1;
  if ((rc = uv_tcp_open(&a->conn, fd)) < 0) {
    close(fd);
    lost(a, "%s", uv_strerror(rc));
  } else {
    uv_tcp_nodelay(&a->conn, 1); /* beats and control frames are small and late is lost */
    uv_timer_init(&a->loop, &a->beat);
    uv_timer_init(&a->loop, &a->watch);
    a->beat.data = a->watch.data = a;
    a->beat_open = a->watch_open = 1;
    uv_timer_start(&a->watch, on_watch, (uint64_t)a->timeout_ms, (uint64_t)a->timeout_ms);
    uv_timer_start(&a->beat, on_beat, (uint64_t)a->beat_ms, (uint64_t)a->beat_ms);
    uv_read_start((uv_stream_t *)&a->conn, on_conn_alloc, on_conn_read);
  }
  uv_signal_init(&a->loop, &a->sigterm);
  uv_signal_init(&a->loop, &a->sigint);
  uv_signal_init(&a->loop, &a->sigusr1);
  a->sigterm.data = a->sigint.data = a->sigusr1.data = a;
  a->sig_open = 1;
  uv_signal_start(&a->sigterm, on_signal, SIGTERM);
  uv_signal_start(&a->sigint, on_signal, SIGINT);
  uv_signal_start(&a->sigusr1, on_signal, SIGUSR1);
  /* signals never keep the loop alive: the connection and workers do */
  uv_unref((uv_handle_t *)&a->sigterm);
  uv_unref((uv_handle_t *)&a->sigint);
  uv_unref((uv_handle_t *)&a->sigusr1);
  drain_rx(a); /* frames that came with the WELCOME */
  uv_run(&a->loop, UV_RUN_DEFAULT);
  /* Ended (or the wait for killed workers ran out): close what is left,
   * worker handles included, and free the workers. */
  uv_walk(&a->loop, close_any, NULL);
  uv_run(&a->loop, UV_RUN_DEFAULT);
  while (a->workers) {
    aworker_t *w = a->workers;
    a->workers = w->next;
    free(w);
  }
  uv_loop_close(&a->loop);
  code = a->ending ? a->code : BT_EXIT_FAILED;
  if (a->endmsg[0]) say("%s", a->endmsg);
out:
  sigaction(SIGPIPE, &old_pipe, NULL);
  free(a->rx);
  free(a);
  return code;
}
