/* bench_multinode.c - what watching many nodes costs the coordinator, and
 * how long a multi-node `baton run` takes to notice a lost node and to
 * train again after re-forming without it.
 *
 * A. The coordinator's cost. One hub (launcher/hub.h) in this process,
 *    rank 0 of a job of --nodes + 1 nodes (default 512 + 1), listening on
 *    127.0.0.1, heartbeat 1 s, node timeout 10 s, no checkpoint directory.
 *    A forked simulator joins --nodes agents over TCP (the real handshake:
 *    HELLO, CHALLENGE, AUTH, WELCOME, JOIN; one connection at a time, so
 *    the hub's limit on connections still in the rendezvous never bites),
 *    then sends a BEAT on every connection at --rate Hz (default 10),
 *    spread evenly over the period, with one epoll loop that also reads
 *    and discards the hub's own beats. After a 2 s warm-up it stamps its
 *    beats (num[1] = CLOCK_MONOTONIC ns just before the write) for
 *    --window seconds (default 20); the hub records send -> handled for
 *    stamped beats only, so its percentiles cover exactly the window.
 *    Printed: the hub thread's CPU time over the window as a share of one
 *    core (goal < 5 %), heartbeats handled, p50/p99/max handling delay
 *    (goal p99 < 10 ms), each goal with PASS or MISS (timing never makes
 *    the exit code), and the hub thread's CPU split into user and kernel
 *    time (/proc, 10 ms ticks): on a small VM most of the cost is the
 *    kernel's, one epoll wake-up and read per heartbeat. Baseline, measured in the same run before the loaded
 *    one: the same hub with no agent connected over the same window; the
 *    ratio loaded/idle is printed. The simulator's own CPU share and how
 *    late it sent (against its schedule) are printed too, so a reader can
 *    tell the machine was not saturated. A node lost during the window,
 *    or one that did not join, is a correctness failure: exit 1.
 *
 * B. Node loss in real runs. The built `baton` (--baton, else BATON_BIN,
 *    else ../baton next to this program) as a 2-node job on loopback:
 *    rank 0 and rank 1 each `baton run --nnodes 2 --stages-per-node 1
 *    --node-timeout 2 --heartbeat-timeout 4 --ckpt-dir DIR --ckpt-every 2
 *    --events FILE --hash`, secret file mode 0600. Once the coordinator's
 *    --metrics file shows step --kill-step, node 1 is lost in one of two
 *    ways, --runs times each:
 *      kill  SIGKILL to node 1's `baton run` (its workers die with it,
 *            PR_SET_PDEATHSIG): the connection drops; the hub sees EOF.
 *      stop  SIGSTOP to node 1's `baton run` and to its workers' process
 *            groups: the connection stays up and goes silent; the node
 *            timeout (2 s) detects it (--heartbeat-timeout 4 keeps the
 *            workers' own relayed heartbeats from deciding first).
 *    Figures, medians over the runs of each mode:
 *      detect_s      the loss -> the coordinator's first `failure` event.
 *                    The event's time_s counts from the coordinator's
 *                    epoch, which this program learns by watching the
 *                    events file with inotify: epoch = min over the lines
 *                    of (the time a line was seen - its time_s), an upper
 *                    bound tight to the write-to-wake-up latency; the
 *                    loss's time is read just before the kill(2), so the
 *                    figure errs long, never short.
 *      reform_s      that failure event -> the `recovered` event, written
 *                    when the first step after the re-form completes (on
 *                    1 stage, node 0 alone): stop, back-off, plan, spawn,
 *                    restore and one step.
 *    Every run must end with exit 0, a `restart` event followed by a
 *    `ready` on 1 stage (the pipeline re-formed on node 0 alone), and the
 *    hash of `baton train --hash` with the same model flags; otherwise
 *    exit 1 (a correctness failure, not a timing one).
 *
 * Prints a table, then one JSON line. Run from the build directory:
 *   ./bench/bench_multinode                    both parts, default sizes (~2 min)
 *   ./bench/bench_multinode --only hub --window 120
 *   BATON_BIN=/path/to/baton ./bench/bench_multinode --only loss --runs 11
 *
 * Usage: bench_multinode [--baton PATH] [--window S] [--nodes N] [--rate HZ]
 *                        [--runs N] [--steps N] [--kill-step N] [--dir DIR]
 *                        [--only hub|loss]
 * Not a test: it asserts nothing about speed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/clock.h"
#include "common/frame.h"
#include "common/json.h"
#include "common/log.h"
#include "common/parse.h"
#include "common/sysinfo.h"
#include "launcher/hub.h"

#define MAX_RUNS 200
#define WARMUP_S 2.0
#define JOB_ID "bench-multinode"

typedef struct {
  char baton[PATH_MAX];
  char dir[PATH_MAX];
  double window_s, rate_hz;
  int nodes, runs, only_hub, only_loss;
  int64_t steps, kill_step;
} opts_t;

static int64_t mono_ns(void) { return (int64_t)bt_clock_ns(); }

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  if (n <= 0) return NAN;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static double proc_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int write_all(int fd, const void *p, size_t n) {
  const uint8_t *b = p;
  while (n) {
    ssize_t k = write(fd, b, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    b += k;
    n -= (size_t)k;
  }
  return 0;
}

/* Reads exactly n bytes before the deadline (bt_clock_ns based). */
static int read_full(int fd, void *p, size_t n, uint64_t deadline) {
  uint8_t *b = p;
  while (n) {
    int64_t left = bt_ms_left(deadline);
    if (left <= 0) return -ETIMEDOUT;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int pr = poll(&pf, 1, (int)(left > 1000000 ? 1000000 : left));
    if (pr < 0 && errno != EINTR) return -errno;
    if (pr <= 0) continue;
    ssize_t k = read(fd, b, n);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) return -EPIPE;
    if (k < 0) return -errno;
    b += k;
    n -= (size_t)k;
  }
  return 0;
}

/* User and kernel CPU seconds of this process's threads other than the
 * calling one (the hub's thread), from /proc (clock ticks). */
static void other_threads_cpu(double *user_s, double *sys_s) {
  *user_s = *sys_s = 0;
  DIR *d = opendir("/proc/self/task");
  if (!d) return;
  long hz = sysconf(_SC_CLK_TCK);
  pid_t me = gettid();
  struct dirent *e;
  while ((e = readdir(d))) {
    long tid = strtol(e->d_name, NULL, 10);
    if (tid <= 0 || tid == me) continue;
    char path[96], buf[1024];
    snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    char *rp = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (rp && sscanf(rp + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2) {
      *user_s += (double)ut / (double)hz;
      *sys_s += (double)st / (double)hz;
    }
  }
  closedir(d);
}

static void raise_nofile(rlim_t want) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) < 0 || r.rlim_cur >= want) return;
  r.rlim_cur = want < r.rlim_max ? want : r.rlim_max;
  setrlimit(RLIMIT_NOFILE, &r);
}

/* ================= A. the simulator (a child process) ================= */

typedef struct {
  double cpu_s, wall_s;      /* over the stamped window */
  uint64_t sent, stalls;     /* stamped beats sent; writes that did not go whole */
  double late_max_ms, late_p99_ms; /* sent after the schedule said */
  uint64_t eof_in_window;    /* connections the hub closed during the window */
  int ok;
  char why[200];
} sim_report_t;

typedef struct {
  int fd, open;
  uint8_t *pend;             /* bytes a short write left */
  size_t plen;
} sconn_t;

/* Blocking handshake helpers (deadline: 10 s per step). */
static int sim_send(int fd, uint16_t type, const bt_node_msg_t *m) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_node_encode(&b, type, m);
  int rc = b.err ? -1 : write_all(fd, b.data, b.len);
  bt_buf_free(&b);
  return rc;
}

static int sim_recv(int fd, uint8_t *buf, size_t cap, size_t *len, uint16_t *type, bt_node_msg_t *m) {
  uint64_t dl = bt_deadline_ms(10000);
  for (;;) {
    bt_frame_t f;
    long n = bt_frame_parse(buf, *len, &f);
    if (n < 0) return -1;
    if (n > 0) {
      if (bt_node_decode(&f, m) < 0) return -1;
      *type = f.type;
      memmove(buf, buf + n, *len - (size_t)n);
      *len -= (size_t)n;
      return 0;
    }
    if (*len == cap) return -1;
    int64_t left = bt_ms_left(dl);
    if (left <= 0) return -1;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (poll(&pf, 1, (int)left) <= 0) continue;
    ssize_t k = read(fd, buf + *len, cap - *len);
    if (k <= 0) return -1;
    *len += (size_t)k;
  }
}

static int sim_join(int port, uint32_t rank, const bt_secret_t *sec, char *why, size_t whylen) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(why, whylen, "socket: %s", strerror(errno));
    return -1;
  }
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    snprintf(why, whylen, "node %u: connect: %s", rank, strerror(errno));
    close(fd);
    return -1;
  }
  static uint8_t buf[65536];
  size_t len = 0;
  char ctx[160];
  snprintf(ctx, sizeof ctx, "%s %u", JOB_ID, rank);
  uint8_t cn[BT_NONCE_LEN], sn[BT_NONCE_LEN], want[BT_SHA256_LEN];
  bt_node_msg_t m;
  uint16_t type = 0;
  memset(&m, 0, sizeof m);
  if (bt_random_bytes(cn, sizeof cn) < 0) goto fail;
  m.node = rank;
  snprintf(m.text, sizeof m.text, "%s", JOB_ID);
  memcpy(m.nonce, cn, sizeof cn);
  if (sim_send(fd, BT_NODE_HELLO, &m) < 0 || sim_recv(fd, buf, sizeof buf, &len, &type, &m) < 0 ||
      type != BT_NODE_CHALLENGE)
    goto fail;
  memcpy(sn, m.nonce, sizeof sn);
  bt_auth_proof(sec, "baton-coord", ctx, cn, sn, want);
  if (!bt_ct_equal(want, m.proof, sizeof want)) goto fail;
  memset(&m, 0, sizeof m);
  m.node = rank;
  bt_auth_proof(sec, "baton-node", ctx, sn, cn, m.proof);
  if (sim_send(fd, BT_NODE_AUTH, &m) < 0 || sim_recv(fd, buf, sizeof buf, &len, &type, &m) < 0 ||
      type != BT_NODE_WELCOME)
    goto fail;
  char host[64];
  snprintf(host, sizeof host, "sim-%u", rank);
  memset(&m, 0, sizeof m);
  m.node = rank;
  m.num[0] = 1;
  m.num[1] = (int64_t)getpid();
  snprintf(m.text, sizeof m.text, "127.0.0.1");
  m.data = (const uint8_t *)host;
  m.dlen = (uint32_t)strlen(host);
  if (sim_send(fd, BT_NODE_JOIN, &m) < 0) goto fail;
  return fd;
fail:
  snprintf(why, whylen, "node %u: the handshake failed (last message type %u)", rank, type);
  close(fd);
  return -1;
}

/* Sends (or queues) one beat; 1 if the write did not go whole. */
static int sim_beat(sconn_t *c, uint32_t rank, int64_t seq, int stamp) {
  if (!c->open) return 0;
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.node = rank;
  m.num[0] = seq;
  bt_buf_t b;
  bt_buf_init(&b);
  int stalled = 0;
  if (c->plen) { /* flush what is left first, in order */
    ssize_t k = send(c->fd, c->pend, c->plen, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k > 0) {
      memmove(c->pend, c->pend + k, c->plen - (size_t)k);
      c->plen -= (size_t)k;
    }
  }
  m.num[1] = stamp ? mono_ns() : 0;
  bt_node_encode(&b, BT_NODE_BEAT, &m);
  size_t off = 0;
  if (!c->plen && !b.err) {
    ssize_t k = send(c->fd, b.data, b.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k > 0) off = (size_t)k;
  }
  if (!b.err && off < b.len) {
    stalled = 1;
    uint8_t *p = realloc(c->pend, c->plen + b.len - off);
    if (p) {
      c->pend = p;
      memcpy(p + c->plen, b.data + off, b.len - off);
      c->plen += b.len - off;
    }
  }
  bt_buf_free(&b);
  return stalled;
}

/* The child: reads the hub's port from `in`, joins every node, beats, and
 * reports on `out`: 'J' when joined, 'S' at the window's start, 'E' and a
 * sim_report_t at its end. Leaves when the hub closed every connection
 * (BYE) or after a deadline. */
static int simulator(const opts_t *o, const bt_secret_t *sec, int in, int out) {
  uint32_t port = 0;
  if (read_full(in, &port, sizeof port, bt_deadline_ms(600000)) < 0) return 1;
  int n = o->nodes;
  sconn_t *cs = calloc((size_t)n, sizeof *cs);
  sim_report_t rep;
  memset(&rep, 0, sizeof rep);
  if (!cs) return 1;
  for (int i = 0; i < n; i++) {
    cs[i].fd = sim_join((int)port, (uint32_t)i + 1, sec, rep.why, sizeof rep.why);
    if (cs[i].fd < 0) {
      write_all(out, "X", 1);
      write_all(out, &rep, sizeof rep);
      return 1;
    }
    cs[i].open = 1;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return 1;
  for (int i = 0; i < n; i++) {
    fcntl(cs[i].fd, F_SETFL, fcntl(cs[i].fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &e);
  }
  write_all(out, "J", 1);
  /* Beats go round robin, one every period/n: every node beats once per
   * period, evenly spread. */
  int64_t spacing = (int64_t)(1e9 / o->rate_hz / n);
  int64_t t0 = mono_ns(), due = t0;
  int64_t win_start = t0 + (int64_t)(WARMUP_S * 1e9), win_end = win_start + (int64_t)(o->window_s * 1e9);
  int64_t give_up = win_end + (int64_t)60e9;
  int phase = 0; /* 0 warm-up, 1 window, 2 after */
  uint64_t next = 0, open = (uint64_t)n;
  double cpu0 = 0;
  size_t lcap = (size_t)(o->window_s * o->rate_hz * n) + 16, nlate = 0;
  float *late = malloc(lcap * sizeof *late);
  static uint8_t scratch[65536];
  while (open > 0) {
    int64_t now = mono_ns();
    if (phase == 0 && now >= win_start) {
      phase = 1;
      cpu0 = proc_cpu_s();
      write_all(out, "S", 1);
    }
    if (phase == 1 && now >= win_end) {
      phase = 2;
      rep.cpu_s = proc_cpu_s() - cpu0;
      rep.wall_s = (double)(now - win_start) / 1e9;
      if (nlate) {
        qsort(late, nlate, sizeof *late, cmp_float);
        rep.late_p99_ms = late[(size_t)((double)(nlate - 1) * 0.99)];
      }
      rep.ok = 1;
      write_all(out, "E", 1);
      write_all(out, &rep, sizeof rep);
    }
    if (now >= give_up) break;
    while (due <= now) {
      int idx = (int)(next % (uint64_t)n);
      int stamp = phase == 1 && due >= win_start && due < win_end;
      if (stamp && cs[idx].open) {
        double l = (double)(now - due) / 1e6;
        if (l > rep.late_max_ms) rep.late_max_ms = l;
        if (late && nlate < lcap) late[nlate++] = (float)l;
        rep.sent++;
      }
      if (sim_beat(&cs[idx], (uint32_t)idx + 1, (int64_t)(next / (uint64_t)n) + 1, stamp) && stamp) rep.stalls++;
      next++;
      due += spacing;
    }
    int64_t wait_ns = due - mono_ns();
    int to = wait_ns <= 0 ? 0 : (int)((wait_ns + 999999) / 1000000);
    struct epoll_event ev[64];
    int k = epoll_wait(ep, ev, 64, to);
    for (int j = 0; j < k; j++) {
      sconn_t *c = &cs[ev[j].data.u32];
      if (!c->open) continue;
      ssize_t r;
      while ((r = read(c->fd, scratch, sizeof scratch)) > 0) {
      }
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        c->open = 0;
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        open--;
        if (phase == 1) rep.eof_in_window++;
      }
    }
  }
  return 0;
}

/* ================= A. the coordinator's side ================= */

typedef struct {
  int ok;
  double idle_cpu_share, cpu_share, ratio;
  uint64_t beats, expected;
  double p50_ms, p99_ms, max_ms;
  double user_share, sys_share; /* the hub thread's CPU split, from /proc (10 ms ticks) */
  uint64_t lost;
  uint32_t joined;
  sim_report_t sim;
} hub_result_t;

static int hub_open(const opts_t *o, const bt_secret_t *sec, bt_hub_t **h) {
  bt_hub_opts_t ho;
  bt_hub_opts_default(&ho);
  ho.bind_host = "127.0.0.1";
  ho.port = 0;
  ho.nnodes = (uint32_t)o->nodes + 1;
  ho.secret = sec;
  ho.job_id = JOB_ID;
  ho.ckpt_dir = NULL;
  ho.beat_ms = 1000;
  ho.node_timeout_ms = 10000;
  char why[512];
  int rc = bt_hub_start(&ho, h, why, sizeof why);
  if (rc < 0) fprintf(stderr, "bench_multinode: the hub did not start: %s\n", why);
  return rc;
}

/* Waits for one marker byte from the simulator; the report follows 'E'
 * and 'X'. */
static int expect(int fd, char want, sim_report_t *rep, double timeout_s) {
  char c = 0;
  if (read_full(fd, &c, 1, bt_deadline_ms((int64_t)(timeout_s * 1000))) < 0) {
    fprintf(stderr, "bench_multinode: the simulator said nothing within %.0f s (waiting for '%c')\n", timeout_s, want);
    return -1;
  }
  if ((c == 'E' || c == 'X') && read_full(fd, rep, sizeof *rep, bt_deadline_ms(5000)) < 0) return -1;
  if (c == 'X') {
    fprintf(stderr, "bench_multinode: the simulator failed: %s\n", rep->why);
    return -1;
  }
  if (c != want) {
    fprintf(stderr, "bench_multinode: the simulator said '%c', not '%c'\n", c, want);
    return -1;
  }
  return 0;
}

static int wait_child(pid_t pid, double timeout_s) {
  uint64_t dl = bt_deadline_ms((int64_t)(timeout_s * 1000));
  int st;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (r < 0 && errno != EINTR) return -errno;
    if (bt_ms_left(dl) <= 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      return -ETIMEDOUT;
    }
    bt_sleep_ms(10);
  }
}

static int bench_hub(const opts_t *o, hub_result_t *r) {
  memset(r, 0, sizeof *r);
  raise_nofile((rlim_t)o->nodes * 2 + 256);
  bt_secret_t *sec = calloc(1, sizeof *sec);
  if (!sec || bt_random_bytes(sec->key, 32) < 0) return -1;
  sec->len = 32;
  snprintf(sec->source, sizeof sec->source, "bench");
  /* The simulator is forked before any hub thread exists. */
  int to_sim[2], from_sim[2];
  if (pipe2(to_sim, O_CLOEXEC) < 0 || pipe2(from_sim, O_CLOEXEC) < 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    close(to_sim[1]);
    close(from_sim[0]);
    _exit(simulator(o, sec, to_sim[0], from_sim[1]));
  }
  close(to_sim[0]);
  close(from_sim[1]);
  int rc = -1;
  bt_hub_t *h = NULL;

  /* Baseline: the same hub, nobody connected, the same window. */
  if (hub_open(o, sec, &h) < 0) goto out;
  bt_hub_stats_t b0, b1;
  bt_hub_stats(h, &b0);
  bt_sleep_ms((int64_t)(o->window_s * 1000));
  bt_hub_stats(h, &b1);
  bt_hub_stop(h, 0, "baseline over", 1.0);
  h = NULL;
  r->idle_cpu_share = (b1.cpu_s - b0.cpu_s) / (b1.wall_s - b0.wall_s);

  /* Loaded. */
  if (hub_open(o, sec, &h) < 0) goto out;
  uint32_t port = (uint32_t)bt_hub_port(h);
  if (write_all(to_sim[1], &port, sizeof port) < 0) goto out;
  char why[2048];
  double join_s = 60 + o->nodes * 0.05;
  if (bt_hub_wait_joined(h, join_s, why, sizeof why) < 0) {
    fprintf(stderr, "bench_multinode: not every simulated node joined: %s\n", why);
    goto out;
  }
  bt_hub_drain(h);
  if (expect(from_sim[0], 'J', &r->sim, 30) < 0 || expect(from_sim[0], 'S', &r->sim, WARMUP_S + 30) < 0) goto out;
  bt_hub_stats_t s0, s1, s2;
  double u0, k0, u1, k1;
  other_threads_cpu(&u0, &k0);
  bt_hub_stats(h, &s0);
  if (expect(from_sim[0], 'E', &r->sim, o->window_s + 30) < 0) goto out;
  bt_hub_stats(h, &s1);
  other_threads_cpu(&u1, &k1);
  r->user_share = (u1 - u0) / (s1.wall_s - s0.wall_s);
  r->sys_share = (k1 - k0) / (s1.wall_s - s0.wall_s);
  bt_sleep_ms(300); /* beats still in flight at the window's end */
  bt_hub_stats(h, &s2);
  for (uint32_t i = 1; i <= (uint32_t)o->nodes; i++) {
    bt_hub_node_t nd;
    if (bt_hub_node(h, i, &nd) == 0 && nd.alive) r->joined++;
  }
  r->cpu_share = (s1.cpu_s - s0.cpu_s) / (s1.wall_s - s0.wall_s);
  r->ratio = r->idle_cpu_share > 0 ? r->cpu_share / r->idle_cpu_share : NAN;
  r->beats = s1.beats - s0.beats;
  r->expected = r->sim.sent;
  r->p50_ms = s2.beat_p50_ms;
  r->p99_ms = s2.beat_p99_ms;
  r->max_ms = s2.beat_max_ms;
  r->lost = s2.lost;
  r->ok = r->lost == 0 && r->joined == (uint32_t)o->nodes && r->sim.eof_in_window == 0;
  rc = 0;
out:
  if (h) bt_hub_stop(h, 0, "bench over", 2.0);
  close(to_sim[1]);
  int crc = wait_child(pid, 30);
  if (crc != 0) fprintf(stderr, "bench_multinode: the simulator ended with %d\n", crc);
  close(from_sim[0]);
  free(sec);
  return rc;
}

/* ================= B. node loss in real runs ================= */

/* The number after "key": in line, or NAN. */
static double field(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(line, pat);
  return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* The string after "key": in line (escapes kept as they are), or "". */
static void sfield(const char *line, const char *key, char *out, size_t cap) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = strstr(line, pat);
  out[0] = 0;
  if (!p) return;
  p += strlen(pat);
  size_t n = 0;
  while (p[n] && !(p[n] == '"' && (n == 0 || p[n - 1] != '\\'))) n++;
  snprintf(out, cap, "%.*s", (int)n, p);
}

static pid_t spawn(char *const argv[], const char *out, const char *err) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fo >= 0) dup2(fo, 1);
  if (fe >= 0) dup2(fe, 2);
  execv(argv[0], argv);
  _exit(127);
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa = {.sin_family = AF_INET};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof sa;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
    port = ntohs(sa.sin_port);
  close(fd);
  return port;
}

/* The processes whose parent is `ppid` (from /proc). */
static int children_of(pid_t ppid, pid_t *out, int max) {
  DIR *d = opendir("/proc");
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < max) {
    char *end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end || pid <= 0) continue;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    char *rp = strrchr(buf, ')'); /* "pid (comm) state ppid ..." */
    char st;
    long pp;
    if (rp && sscanf(rp + 1, " %c %ld", &st, &pp) == 2 && pp == ppid) out[n++] = (pid_t)pid;
  }
  closedir(d);
  return n;
}

static int read_hash(const char *path, char *hex, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[512];
  hex[0] = 0;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "hash ", 5)) snprintf(hex, cap, "%.32s", line + 5);
  fclose(f);
  return hex[0] ? 0 : -1;
}

/* Follows a file that another process appends lines to. */
typedef struct {
  char path[PATH_MAX + 32];
  long off;
  char part[65536];
  size_t plen;
} follow_t;

/* Calls fn on each new complete line. */
static void follow(follow_t *fw, void (*fn)(void *, const char *), void *arg) {
  FILE *f = fopen(fw->path, "r");
  if (!f) return;
  if (fseek(f, fw->off, SEEK_SET) == 0) {
    size_t k;
    while ((k = fread(fw->part + fw->plen, 1, sizeof fw->part - 1 - fw->plen, f)) > 0) {
      fw->off += (long)k;
      fw->plen += k;
      fw->part[fw->plen] = 0;
      char *s = fw->part, *nl;
      while ((nl = strchr(s, '\n'))) {
        *nl = 0;
        fn(arg, s);
        s = nl + 1;
      }
      fw->plen -= (size_t)(s - fw->part);
      memmove(fw->part, s, fw->plen);
      if (fw->plen == sizeof fw->part - 1) fw->plen = 0; /* a line too long: dropped */
    }
  }
  fclose(f);
}

typedef struct {
  double epoch;              /* the coordinator's epoch on our clock (upper bound) */
  double fail_t, reform_t, recovered_t; /* time_s of the first of each (NAN: none) */
  int reform_stages;         /* the `ready` after the restart: stages of the re-formed pipeline */
  char cause[256];
  int64_t steps;             /* metrics lines */
} watch_t;

static void on_event(void *arg, const char *line) {
  watch_t *w = arg;
  double t = field(line, "time_s"), now = bt_clock_s();
  if (!isnan(t) && now - t < w->epoch) w->epoch = now - t;
  if (strstr(line, "\"event\":\"failure\"") && isnan(w->fail_t)) {
    w->fail_t = t;
    sfield(line, "reason", w->cause, sizeof w->cause);
  } else if ((strstr(line, "\"event\":\"reform\"") || strstr(line, "\"event\":\"restart\"")) && isnan(w->reform_t)) {
    w->reform_t = t; /* `reform` when the policy retired a stage; a lost node re-forms at the restart */
  } else if (strstr(line, "\"event\":\"ready\"") && !isnan(w->reform_t) && !w->reform_stages) {
    w->reform_stages = (int)field(line, "stages");
  } else if (strstr(line, "\"event\":\"recovered\"") && isnan(w->recovered_t))
    w->recovered_t = t;
}

static void on_metric(void *arg, const char *line) {
  (void)line;
  ((watch_t *)arg)->steps++;
}

typedef struct {
  int ok;
  double detect_s, reform_s;
  char cause[256];
  char why[512];
} loss_t;

/* One 2-node run that loses node 1 (stop: SIGSTOP, else SIGKILL). */
static void loss_run(const opts_t *o, int stop, int run_i, const char *secret, const char *want_hash,
                     const char *const *model, loss_t *r) {
  memset(r, 0, sizeof *r);
  char rd[PATH_MAX], ck[PATH_MAX + 8], ev[PATH_MAX + 16], met[PATH_MAX + 16], out0[PATH_MAX + 8],
      err0[PATH_MAX + 8], out1[PATH_MAX + 8], err1[PATH_MAX + 8];
  snprintf(rd, sizeof rd, "%.3900s/%s-%d", o->dir, stop ? "stop" : "kill", run_i + 1);
  mkdir(rd, 0700);
  snprintf(ck, sizeof ck, "%s/ck", rd);
  snprintf(ev, sizeof ev, "%s/events.jsonl", rd);
  snprintf(met, sizeof met, "%s/metrics.jsonl", rd);
  snprintf(out0, sizeof out0, "%s/out0", rd);
  snprintf(err0, sizeof err0, "%s/err0", rd);
  snprintf(out1, sizeof out1, "%s/out1", rd);
  snprintf(err1, sizeof err1, "%s/err1", rd);
  int port = free_port();
  char rdzv[64], steps[32], job[64];
  snprintf(rdzv, sizeof rdzv, "127.0.0.1:%d", port);
  snprintf(steps, sizeof steps, "%lld", (long long)o->steps);
  snprintf(job, sizeof job, "bench-%s-%d-%d", stop ? "stop" : "kill", run_i + 1, (int)getpid());
  int fdi = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (fdi < 0 || inotify_add_watch(fdi, rd, IN_MODIFY | IN_CREATE | IN_CLOSE_WRITE) < 0) {
    snprintf(r->why, sizeof r->why, "inotify: %s", strerror(errno));
    if (fdi >= 0) close(fdi);
    return;
  }
  pid_t pids[2];
  for (int rank = 0; rank < 2; rank++) {
    const char *argv[64];
    int n = 0;
    argv[n++] = o->baton;
    argv[n++] = "run";
    const char *fl[] = {"--nnodes", "2", "--node-rank", rank ? "1" : "0", "--rdzv", rdzv, "--job-id", job,
                        "--secret-file", secret, "--stages-per-node", "1", "--node-timeout", "2",
                        "--ckpt-dir", ck, "--steps", steps, "--no-progress", NULL};
    for (int i = 0; fl[i]; i++) argv[n++] = fl[i];
    for (int i = 0; model[i]; i++) argv[n++] = model[i];
    if (rank == 0) {
      const char *c0[] = {"--ckpt-every", "2", "--heartbeat-timeout", "4", "--events", ev, "--metrics", met,
                          "--hash", NULL};
      for (int i = 0; c0[i]; i++) argv[n++] = c0[i];
    }
    argv[n] = NULL;
    pids[rank] = spawn((char *const *)argv, rank ? out1 : out0, rank ? err1 : err0);
    if (pids[rank] < 0) {
      snprintf(r->why, sizeof r->why, "fork: %s", strerror(errno));
      if (rank == 1) {
        kill(pids[0], SIGKILL);
        wait_child(pids[0], 10);
      }
      close(fdi);
      return;
    }
  }
  watch_t w = {.epoch = INFINITY, .fail_t = NAN, .reform_t = NAN, .recovered_t = NAN};
  follow_t fe = {.off = 0}, fm = {.off = 0};
  snprintf(fe.path, sizeof fe.path, "%s", ev);
  snprintf(fm.path, sizeof fm.path, "%s", met);
  uint64_t dl = bt_deadline_ms(300000);
  double t_loss = NAN;
  int coord_rc = -1, agent_reaped = 0;
  pid_t kids[64];
  int nkids = 0;
  for (;;) {
    struct pollfd pf = {.fd = fdi, .events = POLLIN};
    poll(&pf, 1, 50);
    char ib[8192];
    while (read(fdi, ib, sizeof ib) > 0) {
    }
    follow(&fe, on_event, &w);
    follow(&fm, on_metric, &w);
    if (isnan(t_loss) && w.steps >= o->kill_step) {
      nkids = children_of(pids[1], kids, 64);
      if (stop) {
        t_loss = bt_clock_s(); /* read before: the loss cannot come before it */
        kill(pids[1], SIGSTOP);
        for (int i = 0; i < nkids; i++) {
          pid_t g = getpgid(kids[i]);
          if (g > 1 && g != getpgrp()) kill(-g, SIGSTOP);
          kill(kids[i], SIGSTOP);
        }
      } else {
        t_loss = bt_clock_s();
        kill(pids[1], SIGKILL);
      }
    }
    int st;
    pid_t got = waitpid(pids[0], &st, WNOHANG);
    if (got == pids[0]) {
      coord_rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      break;
    }
    if (!agent_reaped && waitpid(pids[1], &st, WNOHANG) == pids[1]) agent_reaped = 1;
    if (bt_ms_left(dl) <= 0) {
      kill(pids[0], SIGKILL);
      waitpid(pids[0], &st, 0);
      snprintf(r->why, sizeof r->why, "the coordinator did not finish within 300 s (logs in %.300s)", rd);
      break;
    }
  }
  follow(&fe, on_event, &w);
  close(fdi);
  /* Node 1 leaves nothing behind. Stopped, its workers cannot have exited,
   * so their ids are still theirs: killed first, then the agent. Killed
   * (SIGKILL), the agent took its workers with it (PR_SET_PDEATHSIG). */
  if (stop && !isnan(t_loss))
    for (int i = 0; i < nkids; i++) {
      pid_t g = getpgid(kids[i]);
      if (g > 1 && g != getpgrp()) kill(-g, SIGKILL);
      kill(kids[i], SIGKILL);
    }
  if (!agent_reaped) {
    kill(pids[1], SIGKILL);
    if (wait_child(pids[1], 10) < 0 && !r->why[0]) snprintf(r->why, sizeof r->why, "node 1 did not end");
  }
  if (r->why[0]) return;
  if (isnan(t_loss)) {
    snprintf(r->why, sizeof r->why, "the job ended (exit %d) before step %lld: raise --steps (logs in %.300s)",
             coord_rc, (long long)o->kill_step, rd);
    return;
  }
  char hex[64];
  if (coord_rc != 0 || read_hash(out0, hex, sizeof hex) < 0) {
    snprintf(r->why, sizeof r->why, "the coordinator exited %d%s (logs in %.300s)", coord_rc,
             coord_rc == 0 ? " without a hash" : "", rd);
    return;
  }
  if (strcmp(hex, want_hash)) {
    snprintf(r->why, sizeof r->why, "final hash %s differs from baton train's %s (logs in %.300s)", hex, want_hash, rd);
    return;
  }
  if (isnan(w.fail_t) || isnan(w.reform_t) || isnan(w.recovered_t)) {
    snprintf(r->why, sizeof r->why, "no %s event (events in %.300s)",
             isnan(w.fail_t) ? "failure" : isnan(w.reform_t) ? "restart" : "recovered", ev);
    return;
  }
  if (w.reform_stages != 1) {
    snprintf(r->why, sizeof r->why, "the restart ran on %d stages, not 1 (events in %.300s)", w.reform_stages, ev);
    return;
  }
  r->detect_s = w.fail_t + w.epoch - t_loss;
  r->reform_s = w.recovered_t - w.fail_t;
  snprintf(r->cause, sizeof r->cause, "%s", w.cause);
  r->ok = 1;
}

typedef struct {
  int ok, failed;
  double detect_s, reform_s;
  char cause[256];
} loss_row_t;

static int bench_loss(const opts_t *o, loss_row_t rows[2]) {
  memset(rows, 0, 2 * sizeof *rows);
  static const char *const model[] = {"--layers", "4", "--dim", "64", "--mb-tokens", "64", NULL};
  char secret[PATH_MAX + 16], ref[PATH_MAX + 16], refe[PATH_MAX + 16], want[64], steps[32];
  snprintf(secret, sizeof secret, "%s/secret", o->dir);
  snprintf(ref, sizeof ref, "%s/train.out", o->dir);
  snprintf(refe, sizeof refe, "%s/train.err", o->dir);
  snprintf(steps, sizeof steps, "%lld", (long long)o->steps);
  uint8_t key[32];
  char hexkey[65];
  if (bt_random_bytes(key, sizeof key) < 0) return -1;
  for (int i = 0; i < 32; i++) snprintf(hexkey + 2 * i, 3, "%02x", key[i]);
  int fd = open(secret, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write_all(fd, hexkey, 64) < 0) {
    fprintf(stderr, "bench_multinode: %s: %s\n", secret, strerror(errno));
    return -1;
  }
  close(fd);
  const char *targv[16] = {o->baton, "train", "--hash", "--steps", steps};
  int n = 5;
  for (int i = 0; model[i]; i++) targv[n++] = model[i];
  targv[n] = NULL;
  pid_t tp = spawn((char *const *)targv, ref, refe);
  int trc = wait_child(tp, 600);
  if (trc != 0 || read_hash(ref, want, sizeof want) < 0) {
    fprintf(stderr, "bench_multinode: baton train --hash exited %d (see %s)\n", trc, refe);
    return -1;
  }
  int bad = 0;
  for (int mode = 0; mode < 2; mode++) {
    double det[MAX_RUNS], ref_s[MAX_RUNS];
    int k = 0;
    for (int i = 0; i < o->runs; i++) {
      loss_t r;
      loss_run(o, mode, i, secret, want, model, &r);
      if (!r.ok) {
        fprintf(stderr, "bench_multinode: %s run %d: %s\n", mode ? "stop" : "kill", i + 1, r.why);
        rows[mode].failed++;
        bad = 1;
        continue;
      }
      printf("  %s run %d: detect %.1f ms, detect -> first step %.3f s (first failure: %s)\n", mode ? "stop" : "kill",
             i + 1, 1e3 * r.detect_s, r.reform_s, r.cause);
      fflush(stdout);
      det[k] = r.detect_s;
      ref_s[k] = r.reform_s;
      k++;
      snprintf(rows[mode].cause, sizeof rows[mode].cause, "%s", r.cause);
    }
    rows[mode].ok = k;
    rows[mode].detect_s = median(det, k);
    rows[mode].reform_s = median(ref_s, k);
  }
  return bad ? 1 : 0;
}

/* ================= main ================= */

static int parse_args(int argc, char **argv, opts_t *o) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  self[n > 0 ? n : 0] = 0;
  const char *env = getenv("BATON_BIN");
  if (env && env[0]) snprintf(o->baton, sizeof o->baton, "%s", env);
  else snprintf(o->baton, sizeof o->baton, "%s/../baton", dirname(self));
  o->window_s = 20;
  o->rate_hz = 10;
  o->nodes = 512;
  o->runs = 5;
  o->steps = 100;
  o->kill_step = 20;
  for (int i = 1; i < argc; i += 2) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (!strcmp(a, "--help")) {
      printf("usage: bench_multinode [--baton PATH] [--window S] [--nodes N] [--rate HZ] [--runs N]\n"
             "                       [--steps N] [--kill-step N] [--dir DIR] [--only hub|loss]\n"
             "  --baton PATH   the baton binary (default: $BATON_BIN, else ../baton next to this program)\n"
             "  --window S     the hub's measured window in seconds (default 20)\n"
             "  --nodes N      simulated node agents (default 512)\n"
             "  --rate HZ      heartbeats per second per agent (default 10)\n"
             "  --runs N       node-loss runs per mode (default 5)\n"
             "  --steps N      steps of each node-loss run (default 100)\n"
             "  --kill-step N  node 1 is lost once step N is done (default 20)\n"
             "  --dir DIR      scratch directory (default: a new one under /tmp)\n"
             "  --only WHAT    hub: part A only; loss: part B only\n");
      return 1;
    }
    if (!v) bad = 1;
    else if (!strcmp(a, "--baton")) snprintf(o->baton, sizeof o->baton, "%s", v);
    else if (!strcmp(a, "--dir")) snprintf(o->dir, sizeof o->dir, "%s", v);
    else if (!strcmp(a, "--window")) bad = bt_parse_double(v, 1, 86400, &o->window_s);
    else if (!strcmp(a, "--rate")) bad = bt_parse_double(v, 0.1, 1000, &o->rate_hz);
    else if (!strcmp(a, "--nodes")) bad = bt_parse_int(v, 1, BT_HUB_MAX_NODES - 1, &o->nodes);
    else if (!strcmp(a, "--runs")) bad = bt_parse_int(v, 1, MAX_RUNS, &o->runs);
    else if (!strcmp(a, "--steps")) bad = bt_parse_i64(v, 4, 1000000, &o->steps);
    else if (!strcmp(a, "--kill-step")) bad = bt_parse_i64(v, 1, 1000000, &o->kill_step);
    else if (!strcmp(a, "--only")) {
      o->only_hub = !strcmp(v, "hub");
      o->only_loss = !strcmp(v, "loss");
      bad = !o->only_hub && !o->only_loss;
    } else
      bad = 1;
    if (bad) {
      fprintf(stderr, "bench_multinode: bad option '%s'%s%s (try --help)\n", a, v ? " " : "", v ? v : "");
      return 2;
    }
  }
  if (o->kill_step >= o->steps) {
    fprintf(stderr, "bench_multinode: --kill-step %lld must be below --steps %lld\n", (long long)o->kill_step,
            (long long)o->steps);
    return 2;
  }
  return 0;
}

int main(int argc, char **argv) {
  opts_t o;
  memset(&o, 0, sizeof o);
  int prc = parse_args(argc, argv, &o);
  if (prc) return prc == 1 ? 0 : 2;
  signal(SIGPIPE, SIG_IGN);
  bt_log_set_level(BT_LOG_WARN); /* 512 "node joined" lines say nothing here */
  if (!o.only_hub && access(o.baton, X_OK) < 0) {
    fprintf(stderr, "bench_multinode: %s is not executable (use --baton or BATON_BIN)\n", o.baton);
    return 2;
  }
  if (!o.dir[0]) {
    snprintf(o.dir, sizeof o.dir, "/tmp/bench_multinode_XXXXXX");
    if (!mkdtemp(o.dir)) {
      fprintf(stderr, "bench_multinode: mkdtemp: %s\n", strerror(errno));
      return 1;
    }
  } else if (mkdir(o.dir, 0700) < 0 && errno != EEXIST) {
    fprintf(stderr, "bench_multinode: --dir %s: %s\n", o.dir, strerror(errno));
    return 2;
  }
  char cpu[256];
  bt_sys_cpu_model(cpu, sizeof cpu);
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  printf("bench_multinode: cpu %s (%ld online); scratch %s\n", cpu, ncpu, o.dir);
  fflush(stdout);
  int bad = 0;
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "multinode");
  bt_json_kstr(&j, "cpu", cpu);

  if (!o.only_loss) {
    hub_result_t h;
    printf("\nA. coordinator cost: %d simulated agents x %.0f Hz heartbeats over %.0f s (baseline first: the same hub, "
           "no agent, the same window)\n",
           o.nodes, o.rate_hz, o.window_s);
    fflush(stdout);
    if (bench_hub(&o, &h) < 0) {
      fprintf(stderr, "bench_multinode: the coordinator-cost part failed\n");
      return 1;
    }
    double sim_share = h.sim.wall_s > 0 ? h.sim.cpu_s / h.sim.wall_s : NAN;
    printf("  hub thread CPU         %7.3f %% of a core   goal < 5 %%     %s\n", 100 * h.cpu_share,
           h.cpu_share < 0.05 ? "PASS" : "MISS");
    printf("    of which             user %.2f %%, kernel %.2f %% (/proc, 10 ms ticks)\n", 100 * h.user_share,
           100 * h.sys_share);
    printf("  idle hub (baseline)    %7.3f %% of a core   ratio %.1fx\n", 100 * h.idle_cpu_share, h.ratio);
    printf("  heartbeats handled     %7llu of %llu stamped sent (%.0f/s)\n", (unsigned long long)h.beats,
           (unsigned long long)h.expected, (double)h.beats / o.window_s);
    printf("  handling delay         p50 %.3f ms  p99 %.3f ms  max %.3f ms   goal p99 < 10 ms   %s\n", h.p50_ms,
           h.p99_ms, h.max_ms, h.p99_ms < 10 ? "PASS" : "MISS");
    printf("  simulator              %7.3f %% of a core; sent late vs schedule p99 %.3f ms, max %.3f ms; %llu short "
           "writes\n",
           100 * sim_share, h.sim.late_p99_ms, h.sim.late_max_ms, (unsigned long long)h.sim.stalls);
    printf("  nodes joined %u of %d, lost %llu, closed by the hub during the window %llu: %s\n", h.joined, o.nodes,
           (unsigned long long)h.lost, (unsigned long long)h.sim.eof_in_window, h.ok ? "ok" : "FAILED");
    fflush(stdout);
    bt_json_kint(&j, "nodes", o.nodes);
    bt_json_knum(&j, "rate_hz", o.rate_hz);
    bt_json_knum(&j, "window_s", o.window_s);
    bt_json_knum(&j, "hub_cpu_share", h.cpu_share);
    bt_json_knum(&j, "hub_user_share", h.user_share);
    bt_json_knum(&j, "hub_kernel_share", h.sys_share);
    bt_json_knum(&j, "hub_idle_cpu_share", h.idle_cpu_share);
    bt_json_knum(&j, "hub_cpu_ratio_vs_idle", h.ratio);
    bt_json_kint(&j, "beats_handled", (int64_t)h.beats);
    bt_json_kint(&j, "beats_sent", (int64_t)h.expected);
    bt_json_knum(&j, "beat_p50_ms", h.p50_ms);
    bt_json_knum(&j, "beat_p99_ms", h.p99_ms);
    bt_json_knum(&j, "beat_max_ms", h.max_ms);
    bt_json_knum(&j, "sim_cpu_share", sim_share);
    bt_json_knum(&j, "sim_late_p99_ms", h.sim.late_p99_ms);
    bt_json_kint(&j, "nodes_lost", (int64_t)h.lost);
    if (!h.ok) bad = 1;
  }

  if (!o.only_hub) {
    printf("\nB. node loss: 2 nodes x 1 stage on loopback (--layers 4 --dim 64 --mb-tokens 64 --steps %lld, "
           "--ckpt-every 2, --node-timeout 2, --heartbeat-timeout 4), node 1 lost after step %lld, %d runs each\n",
           (long long)o.steps, (long long)o.kill_step, o.runs);
    fflush(stdout);
    loss_row_t rows[2];
    int lrc = bench_loss(&o, rows);
    if (lrc < 0) return 1;
    if (lrc > 0) bad = 1;
    static const char *const names[2] = {"kill (connection drops)", "stop (silent: node timeout)"};
    static const char *const keys[2] = {"kill", "stop"};
    printf("\n  %-28s %4s %6s %10s %24s\n", "node 1 lost by", "ok", "failed", "detect_s", "detect->first step_s");
    for (int m = 0; m < 2; m++)
      printf("  %-28s %4d %6d %10.4f %24.3f\n", names[m], rows[m].ok, rows[m].failed, rows[m].detect_s,
             rows[m].reform_s);
    printf("  (medians; detect_s: the loss -> the coordinator's first failure event; then -> the recovered event, "
           "written after the first step on the re-formed pipeline)\n");
    for (int m = 0; m < 2; m++) {
      char key[64];
      snprintf(key, sizeof key, "%s_detect_s", keys[m]);
      bt_json_knum(&j, key, rows[m].detect_s);
      snprintf(key, sizeof key, "%s_detect_to_first_step_s", keys[m]);
      bt_json_knum(&j, key, rows[m].reform_s);
      snprintf(key, sizeof key, "%s_failed", keys[m]);
      bt_json_kint(&j, key, rows[m].failed);
    }
    bt_json_kint(&j, "runs", o.runs);
  }
  bt_json_obj_end(&j);
  printf("%s\n", bt_json_error(&j) ? "{}" : bt_json_cstr(&j));
  bt_json_free(&j);
  if (bad) fprintf(stderr, "bench_multinode: a correctness check failed (see above): exit 1\n");
  return bad ? 1 : 0;
}
