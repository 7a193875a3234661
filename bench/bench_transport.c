/* bench_transport.c - the socket transport against raw blocking sockets.
 *
 * Two processes on one host (this one and a forked child) exchange messages
 * of the model's sizes (16 KB, 256 KB, 4 MB by default) four ways, in the
 * same run: through baton's socket transport over loopback TCP and over a
 * Unix socket (opts.local), both with tagged messages, the progress thread
 * and receives posted ahead as a worker posts them; and through plain
 * blocking sockets of each kind (TCP with TCP_NODELAY, a Unix socketpair)
 * that write and read the bare payload.
 *   latency    ping-pong; half the round trip
 *   bandwidth  a one-way stream of messages (8 in flight), then an ack
 * The figures are the ratios transport/raw of the same socket kind (latency
 * > 1 is overhead, bandwidth < 1 is lost throughput), and the local
 * transport against the TCP one (is the same-host path worth having).
 * Prints a table, then one JSON line.
 *
 * Usage: bench_transport [--sizes B,B,...] [--mb M] [--rounds R]
 *   --sizes   message sizes in bytes (default 16384,262144,4194304)
 *   --mb      megabytes streamed per bandwidth measurement (default 64)
 *   --rounds  rounds, alternating raw and transport; the best counts (default 5)
 *
 * Not a test: it asserts nothing about speed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/sysinfo.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/json.h"
#include "common/parse.h"
#include "worker/transport.h"

enum { MAX_SIZES = 16, WINDOW = 8 };
static const uint8_t token[16] = {0xb4, 0x70, 0x01, 0x9c, 0x55, 0x21, 0xde, 0x3a,
                                  0x8f, 0x10, 0x6b, 0xc2, 0x47, 0x99, 0xe0, 0x0d};

typedef struct {
  size_t sizes[MAX_SIZES];
  size_t nsizes;
  int64_t mb;
  int rounds;
} opts_t;

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_transport: %s: %s\n", what, bt_strerror(rc));
  exit(1);
}

static int iters_for(size_t size) {
  size_t it = (16u << 20) / size;
  return it < 20 ? 20 : it > 1000 ? 1000 : (int)it;
}

static int count_for(const opts_t *o, size_t size) {
  size_t c = (size_t)o->mb * (1u << 20) / size;
  return c < 2 * WINDOW ? 2 * WINDOW : (int)c;
}

/* ---- raw blocking TCP ---- */

static void raw_write(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) die("raw write", -errno);
    p += w;
    n -= (size_t)w;
  }
}

static void raw_read(int fd, uint8_t *p, size_t n) {
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) die("raw read", r ? -errno : -ECONNRESET);
    p += r;
    n -= (size_t)r;
  }
}

static void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* ---- one measurement on each side; `lead` is the timing parent ---- */

static double raw_latency(int fd, uint8_t *buf, size_t size, int iters, int lead) {
  uint64_t t0 = bt_clock_ns();
  for (int i = 0; i < iters; i++) {
    if (lead) {
      raw_write(fd, buf, size);
      raw_read(fd, buf, size);
    } else {
      raw_read(fd, buf, size);
      raw_write(fd, buf, size);
    }
  }
  return (double)(bt_clock_ns() - t0) * 1e-9 / iters / 2;
}

static double raw_stream(int fd, uint8_t *buf, size_t size, int count, int lead) {
  uint8_t ack = 0;
  uint64_t t0 = bt_clock_ns();
  if (lead) {
    for (int i = 0; i < count; i++) raw_write(fd, buf, size);
    raw_read(fd, &ack, 1);
  } else {
    for (int i = 0; i < count; i++) raw_read(fd, buf, size);
    raw_write(fd, &ack, 1);
  }
  return (double)(bt_clock_ns() - t0) * 1e-9;
}

static bt_tag_t tg(int64_t step, int kind, int mb) {
  return (bt_tag_t){.step = step, .kind = kind, .stage = 0, .mb = mb};
}

static void must(int rc, const char *what) {
  if (rc) die(what, rc);
}

static double tx_latency(bt_tx_t *tx, uint8_t *a, uint8_t *b, size_t size, int iters, int64_t step,
                         int lead) {
  int peer = 1 - tx->rank;
  uint64_t t0 = bt_clock_ns();
  for (int i = 0; i < iters; i++) {
    bt_tx_req_t *r, *s;
    if (lead) {
      must(bt_tx_irecv(tx, b, size, peer, tg(step, BT_MSG_GRADIENT, i), &r), "irecv");
      must(bt_tx_isend(tx, a, size, peer, tg(step, BT_MSG_ACTIVATION, i), &s), "isend");
    } else {
      must(bt_tx_irecv(tx, b, size, peer, tg(step, BT_MSG_ACTIVATION, i), &r), "irecv");
    }
    must(bt_tx_wait(tx, r, bt_deadline_ms(30000)), "wait receive");
    if (!lead) must(bt_tx_isend(tx, b, size, peer, tg(step, BT_MSG_GRADIENT, i), &s), "isend");
    must(bt_tx_wait(tx, s, bt_deadline_ms(30000)), "wait send");
  }
  return (double)(bt_clock_ns() - t0) * 1e-9 / iters / 2;
}

static double tx_stream(bt_tx_t *tx, uint8_t *bufs, size_t size, int count, int64_t step, int lead) {
  int peer = 1 - tx->rank;
  bt_tx_req_t *req[WINDOW];
  uint8_t ack = 0;
  bt_tx_req_t *ar;
  uint64_t t0 = bt_clock_ns();
  if (lead) {
    /* Sends as a worker starts them: up to WINDOW in flight, a buffer
     * reused only after its send completed. */
    for (int i = 0; i < count; i++) {
      if (i >= WINDOW) must(bt_tx_wait(tx, req[i % WINDOW], bt_deadline_ms(30000)), "wait send");
      must(bt_tx_isend(tx, bufs + (size_t)(i % WINDOW) * size, size, peer,
                       tg(step, BT_MSG_ACTIVATION, i), &req[i % WINDOW]), "isend");
    }
    for (int i = count - WINDOW; i < count; i++)
      must(bt_tx_wait(tx, req[i % WINDOW], bt_deadline_ms(30000)), "wait send");
    must(bt_tx_irecv(tx, &ack, 1, peer, tg(step, BT_MSG_GRADIENT, 0), &ar), "irecv ack");
    must(bt_tx_wait(tx, ar, bt_deadline_ms(30000)), "wait ack");
  } else {
    /* Receives posted ahead, as a worker posts them. */
    for (int i = 0; i < WINDOW; i++)
      must(bt_tx_irecv(tx, bufs + (size_t)i * size, size, peer, tg(step, BT_MSG_ACTIVATION, i), &req[i]),
           "irecv");
    for (int i = 0; i < count; i++) {
      must(bt_tx_wait(tx, req[i % WINDOW], bt_deadline_ms(30000)), "wait receive");
      if (i + WINDOW < count)
        must(bt_tx_irecv(tx, bufs + (size_t)(i % WINDOW) * size, size, peer,
                         tg(step, BT_MSG_ACTIVATION, i + WINDOW), &req[i % WINDOW]), "irecv");
    }
    must(bt_tx_isend(tx, &ack, 1, peer, tg(step, BT_MSG_GRADIENT, 0), &ar), "isend ack");
    must(bt_tx_wait(tx, ar, bt_deadline_ms(30000)), "wait ack");
  }
  return (double)(bt_clock_ns() - t0) * 1e-9;
}

/* Per kind (0 TCP, 1 Unix): seconds; bytes per second. */
typedef struct {
  double raw_lat[2], tx_lat[2], raw_bw[2], tx_bw[2];
} result_t;

static void keep_min(double *best, double v) {
  if (v < *best) *best = v;
}
static void keep_max(double *best, double v) {
  if (v > *best) *best = v;
}

/* Both processes run this; the lead (parent) keeps the best of each. */
static void run(const opts_t *o, const int raw_fd[2], bt_tx_t *const tx[2], int lead, result_t *res) {
  size_t maxsize = 0;
  for (size_t k = 0; k < o->nsizes; k++)
    if (o->sizes[k] > maxsize) maxsize = o->sizes[k];
  uint8_t *a = malloc(maxsize), *b = malloc(maxsize), *bufs = malloc(maxsize * WINDOW);
  if (!a || !b || !bufs) die("malloc", -ENOMEM);
  memset(a, 0x5a, maxsize);
  memset(bufs, 0xa5, maxsize * WINDOW);
  int64_t step = 1;
  for (size_t k = 0; k < o->nsizes; k++)
    res[k] = (result_t){{1e30, 1e30}, {1e30, 1e30}, {0, 0}, {0, 0}};
  for (int r = 0; r < o->rounds; r++) {
    for (size_t k = 0; k < o->nsizes; k++) {
      size_t sz = o->sizes[k];
      int iters = iters_for(sz), count = count_for(o, sz);
      double bytes = (double)sz * count;
      for (int u = 0; u < 2; u++) {
        result_t *q = &res[k];
        keep_min(&q->raw_lat[u], raw_latency(raw_fd[u], a, sz, iters, lead));
        keep_min(&q->tx_lat[u], tx_latency(tx[u], a, b, sz, iters, step++, lead));
        keep_max(&q->raw_bw[u], bytes / raw_stream(raw_fd[u], bufs, sz, count, lead));
        keep_max(&q->tx_bw[u], bytes / tx_stream(tx[u], bufs, sz, count, step++, lead));
      }
    }
  }
  free(a);
  free(b);
  free(bufs);
}

static bt_tx_t *make_tx(int rank, int local) {
  int peer = 1 - rank;
  bt_tx_socket_opts_t so = {.rank = rank, .nranks = 2, .peers = &peer, .npeers = 1,
                            .token = token, .token_len = sizeof token, .local = local};
  bt_tx_t *tx;
  int rc = bt_tx_socket_create(&so, &tx);
  if (rc) die("transport", rc);
  return tx;
}

static int usage(FILE *f) {
  fprintf(f, "usage: bench_transport [--sizes B,B,...] [--mb M] [--rounds R]\n"
             "  --sizes   message sizes in bytes (default 16384,262144,4194304)\n"
             "  --mb      megabytes streamed per bandwidth measurement (default 64)\n"
             "  --rounds  rounds alternating raw and transport; best counts (default 5)\n");
  return f == stdout ? 0 : 2;
}

int main(int argc, char **argv) {
  opts_t o = {.sizes = {16384, 262144, 4194304}, .nsizes = 3, .mb = 64, .rounds = 5};
  for (int i = 1; i < argc; i++) {
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(argv[i], "--help")) return usage(stdout);
    if (!strcmp(argv[i], "--sizes") && v) {
      int tmp[MAX_SIZES];
      if (bt_parse_ints(v, 1, 1 << 30, tmp, MAX_SIZES, &o.nsizes) || o.nsizes == 0) {
        fprintf(stderr, "bench_transport: --sizes: want sizes in bytes, e.g. 16384,262144\n");
        return 2;
      }
      for (size_t k = 0; k < o.nsizes; k++) o.sizes[k] = (size_t)tmp[k];
      i++;
    } else if (!strcmp(argv[i], "--mb") && v) {
      if (bt_parse_i64(v, 1, 1 << 16, &o.mb)) {
        fprintf(stderr, "bench_transport: --mb: want 1 to 65536\n");
        return 2;
      }
      i++;
    } else if (!strcmp(argv[i], "--rounds") && v) {
      if (bt_parse_int(v, 1, 1000, &o.rounds)) {
        fprintf(stderr, "bench_transport: --rounds: want 1 to 1000\n");
        return 2;
      }
      i++;
    } else {
      fprintf(stderr, "bench_transport: unknown or incomplete argument '%s'\n", argv[i]);
      return usage(stderr);
    }
  }

  /* The raw pairs: TCP (listen here, the child dials) and a Unix socketpair. */
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  socklen_t sl = sizeof sa;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, 1) ||
      getsockname(lfd, (struct sockaddr *)&sa, &sl))
    die("raw listen", -errno);
  int usv[2], pipefd[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, usv)) die("socketpair", -errno);
  if (pipe(pipefd)) die("pipe", -errno);
  fflush(stdout);
  pid_t child = fork();
  if (child < 0) die("fork", -errno);
  if (child == 0) {
    /* Rank 1: dials the raw TCP socket, listens for both transports, tells
     * the parent their addresses, and follows the parent's sequence. */
    close(pipefd[0]);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa)) die("raw connect", -errno);
    nodelay(fd);
    int raw[2] = {fd, usv[1]};
    bt_tx_t *tx[2] = {make_tx(1, 0), make_tx(1, 1)};
    for (int u = 0; u < 2; u++) {
      char addr[128];
      snprintf(addr, sizeof addr, "%s", bt_tx_socket_address(tx[u]));
      raw_write(pipefd[1], (const uint8_t *)addr, sizeof addr);
      const char *addrs[2] = {"tcp:127.0.0.1:1", addr};
      must(bt_tx_socket_connect(tx[u], addrs, bt_deadline_ms(30000)), "connect");
    }
    result_t res[MAX_SIZES];
    run(&o, raw, tx, 0, res);
    bt_tx_destroy(tx[0]);
    bt_tx_destroy(tx[1]);
    close(fd);
    _exit(0);
  }
  close(pipefd[1]);
  int fd = accept(lfd, NULL, NULL);
  if (fd < 0) die("raw accept", -errno);
  nodelay(fd);
  int raw[2] = {fd, usv[0]};
  bt_tx_t *tx[2] = {make_tx(0, 0), make_tx(0, 1)};
  for (int u = 0; u < 2; u++) {
    char peer_addr[128];
    raw_read(pipefd[0], (uint8_t *)peer_addr, sizeof peer_addr);
    peer_addr[sizeof peer_addr - 1] = '\0';
    const char *addrs[2] = {bt_tx_socket_address(tx[u]), peer_addr};
    must(bt_tx_socket_connect(tx[u], addrs, bt_deadline_ms(30000)), "connect");
  }
  result_t res[MAX_SIZES];
  run(&o, raw, tx, 1, res);
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
  close(fd);
  int status = 0;
  waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "bench_transport: the peer process failed\n");
    return 1;
  }

  char cpu[256];
  bt_sys_cpu_model(cpu, sizeof cpu);
  printf("transport: socket transport vs raw blocking sockets, two processes on one host; best of %d rounds\n",
         o.rounds);
  printf("cpu: %s; filesystem: %s (not used)\n", cpu, bt_sys_fs_name("."));
  printf("latency, microseconds (half a round trip)\n");
  printf("%10s %9s %9s %7s %9s %9s %7s %11s\n", "bytes", "raw_tcp", "baton_tcp", "x", "raw_unix",
         "baton_unx", "x", "unix/tcp");
  for (size_t k = 0; k < o.nsizes; k++) {
    const result_t *r = &res[k];
    printf("%10zu %9.1f %9.1f %7.2f %9.1f %9.1f %7.2f %11.2f\n", o.sizes[k], r->raw_lat[0] * 1e6,
           r->tx_lat[0] * 1e6, r->tx_lat[0] / r->raw_lat[0], r->raw_lat[1] * 1e6, r->tx_lat[1] * 1e6,
           r->tx_lat[1] / r->raw_lat[1], r->tx_lat[1] / r->tx_lat[0]);
  }
  printf("bandwidth, MB/s (one-way stream, 8 in flight)\n");
  printf("%10s %9s %9s %7s %9s %9s %7s %11s\n", "bytes", "raw_tcp", "baton_tcp", "x", "raw_unix",
         "baton_unx", "x", "unix/tcp");
  for (size_t k = 0; k < o.nsizes; k++) {
    const result_t *r = &res[k];
    printf("%10zu %9.0f %9.0f %7.2f %9.0f %9.0f %7.2f %11.2f\n", o.sizes[k], r->raw_bw[0] / 1e6,
           r->tx_bw[0] / 1e6, r->tx_bw[0] / r->raw_bw[0], r->raw_bw[1] / 1e6, r->tx_bw[1] / 1e6,
           r->tx_bw[1] / r->raw_bw[1], r->tx_bw[1] / r->tx_bw[0]);
  }
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "transport");
  bt_json_kstr(&j, "cpu", cpu);
  bt_json_kstr(&j, "filesystem", bt_sys_fs_name("."));
  bt_json_kstr(&j, "baseline", "raw blocking sockets of the same kind: TCP loopback with TCP_NODELAY, Unix socketpair");
  bt_json_kint(&j, "rounds", o.rounds);
  bt_json_kint(&j, "stream_mb", o.mb);
  bt_json_key(&j, "sizes");
  bt_json_arr_begin(&j);
  static const char *kind[2] = {"tcp", "unix"};
  for (size_t k = 0; k < o.nsizes; k++) {
    const result_t *r = &res[k];
    bt_json_obj_begin(&j);
    bt_json_kint(&j, "bytes", (int64_t)o.sizes[k]);
    for (int u = 0; u < 2; u++) {
      char key[64];
      snprintf(key, sizeof key, "%s_raw_latency_us", kind[u]);
      bt_json_knum(&j, key, r->raw_lat[u] * 1e6);
      snprintf(key, sizeof key, "%s_latency_us", kind[u]);
      bt_json_knum(&j, key, r->tx_lat[u] * 1e6);
      snprintf(key, sizeof key, "%s_latency_ratio", kind[u]);
      bt_json_knum(&j, key, r->tx_lat[u] / r->raw_lat[u]);
      snprintf(key, sizeof key, "%s_raw_mb_per_s", kind[u]);
      bt_json_knum(&j, key, r->raw_bw[u] / 1e6);
      snprintf(key, sizeof key, "%s_mb_per_s", kind[u]);
      bt_json_knum(&j, key, r->tx_bw[u] / 1e6);
      snprintf(key, sizeof key, "%s_bandwidth_ratio", kind[u]);
      bt_json_knum(&j, key, r->tx_bw[u] / r->raw_bw[u]);
    }
    bt_json_knum(&j, "unix_vs_tcp_latency_ratio", r->tx_lat[1] / r->tx_lat[0]);
    bt_json_knum(&j, "unix_vs_tcp_bandwidth_ratio", r->tx_bw[1] / r->tx_bw[0]);
    bt_json_obj_end(&j);
  }
  bt_json_arr_end(&j);
  bt_json_obj_end(&j);
  printf("%s\n", bt_json_cstr(&j));
  bt_json_free(&j);
  return 0;
}
