/* control.c - see control.h. */
#include "worker/control.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "common/parse.h"

/* Longest a control frame may wait for room in the socket. */
#define CONTROL_SEND_TIMEOUT_S 120

struct bt_control {
  int fd;
  int wake_fd;                 /* eventfd: tells the thread to end */
  uint32_t stage, incarnation;
  int64_t heartbeat_ms;
  pthread_t thread;
  int thread_started;

  pthread_mutex_t send_lock;   /* one whole frame at a time on fd */
  bt_buf_t send_buf;           /* guarded by send_lock */

  pthread_mutex_t lock;        /* guards start, have_start */
  pthread_cond_t cond;
  bt_msg_start_t start;
  int have_start;

  _Atomic int64_t step, action, actions_done;
  _Atomic int phase;
  _Atomic int64_t stop_step, ckpt_step;

  uint8_t *rbuf;               /* reader thread only */
  size_t rlen, rcap;
};

int bt_control_guard(void) {
  /* Before anything else: if the supervisor dies from here on, so do we. */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) return -errno;
  const char *s = getenv("BATON_SUPERVISOR_PID");
  int64_t pid;
  if (!s || bt_parse_i64(s, 1, INT32_MAX, &pid) < 0) return BT_EARG;
  /* The death signal is tied to the parent at prctl time: a supervisor that
   * died before it left us reparented, and no signal will ever come. */
  if ((int64_t)getppid() != pid) return BT_EPEER;
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  /* A closed control socket must surface as EPIPE from send(), not kill us
   * before we can say why (send uses MSG_NOSIGNAL too; this covers writes to
   * stdout pipes after the supervisor went away). */
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

int bt_control_env(bt_control_env_t *e) {
  char err[512];
  int rc = bt_worker_env_read(e, err, sizeof err);
  if (rc < 0) bt_error("%s", err);
  return rc;
}

/* Writes one whole frame; the lock keeps frames of the heartbeat thread and
 * the main thread from interleaving on the stream. */
static int send_frame_locked(bt_control_t *c) {
  if (c->send_buf.err) return c->send_buf.err;
  const uint8_t *p = c->send_buf.data;
  size_t left = c->send_buf.len;
  while (left > 0) {
    ssize_t w = send(c->fd, p, left, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return BT_ETIMEOUT; /* SO_SNDTIMEO */
    if (w < 0) return (errno == EPIPE || errno == ECONNRESET) ? BT_EPEER : -errno;
    p += w;
    left -= (size_t)w;
  }
  return 0;
}

#define SEND_WITH(c, encode_call)              \
  do {                                         \
    pthread_mutex_lock(&(c)->send_lock);       \
    bt_buf_reset(&(c)->send_buf);              \
    encode_call;                               \
    rc = send_frame_locked(c);                 \
    pthread_mutex_unlock(&(c)->send_lock);     \
  } while (0)

static int send_heartbeat(bt_control_t *c) {
  bt_msg_heartbeat_t hb = {
      .stage = c->stage,
      .phase = (uint32_t)atomic_load(&c->phase),
      .step = atomic_load(&c->step),
      .action = atomic_load(&c->action),
      .actions_done = atomic_load(&c->actions_done),
  };
  int rc;
  SEND_WITH(c, bt_msg_encode_heartbeat(&c->send_buf, &hb));
  return rc;
}

/* The supervisor is gone or spoke nonsense: nobody can stop or restart us
 * cleanly any more, and PDEATHSIG covers only its death, so end here. */
static void orphaned(const char *why) {
  bt_error("control channel: %s; exiting", why);
  _exit(BT_WEXIT_ORPHAN);
}

static void handle_frame(bt_control_t *c, const bt_frame_t *f) {
  bt_msg_step_t st;
  switch (f->type) {
  case BT_MSG_START: {
    bt_msg_start_t *m = malloc(sizeof *m);
    if (!m || bt_msg_decode_start(f, m) < 0) {
      free(m);
      orphaned("malformed START");
    }
    pthread_mutex_lock(&c->lock);
    c->start = *m;
    c->have_start = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    free(m);
    break;
  }
  case BT_MSG_CKPT_AT:
    if (bt_msg_decode_step(f, &st) < 0) orphaned("malformed CKPT_AT");
    atomic_store(&c->ckpt_step, st.step);
    break;
  case BT_MSG_STOP:
    if (bt_msg_decode_step(f, &st) < 0) orphaned("malformed STOP");
    atomic_store(&c->stop_step, st.step);
    break;
  case BT_MSG_ABORT:
    /* The main thread may sit in a transport wait with a deadline of
     * minutes; ABORT means now, and nothing of ours needs flushing. */
    bt_info("aborted by the supervisor");
    _exit(BT_WEXIT_STOPPED);
  default:
    bt_warn("control channel: ignoring a %s message", bt_msg_type_name(f->type));
  }
}

static void read_frames(bt_control_t *c) {
  if (c->rcap - c->rlen < 4096) {
    size_t cap = c->rcap ? c->rcap * 2 : 65536;
    uint8_t *p = realloc(c->rbuf, cap);
    if (!p) orphaned("out of memory");
    c->rbuf = p;
    c->rcap = cap;
  }
  ssize_t r;
  do {
    r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
  } while (r < 0 && errno == EINTR);
  if (r == 0) orphaned("the supervisor closed it");
  if (r < 0) {
    if (errno == EAGAIN) return;
    orphaned(strerror(errno));
  }
  c->rlen += (size_t)r;
  size_t off = 0;
  for (;;) {
    bt_frame_t f;
    long n = bt_frame_parse(c->rbuf + off, c->rlen - off, &f);
    if (n < 0) orphaned(bt_strerror((int)n));
    if (n == 0) break;
    handle_frame(c, &f);
    off += (size_t)n;
  }
  memmove(c->rbuf, c->rbuf + off, c->rlen - off);
  c->rlen -= off;
}

static void *control_thread(void *arg) {
  bt_control_t *c = arg;
  uint64_t next_beat = bt_deadline_ms(c->heartbeat_ms);
  for (;;) {
    struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = c->wake_fd, .events = POLLIN}};
    int r = poll(p, 2, (int)bt_ms_left(next_beat));
    if (r < 0 && errno != EINTR) orphaned(strerror(errno));
    if (r > 0 && p[1].revents) break;
    if (r > 0 && p[0].revents) read_frames(c);
    if (bt_ms_left(next_beat) == 0) {
      if (send_heartbeat(c) < 0) orphaned("heartbeat could not be sent");
      next_beat = bt_deadline_ms(c->heartbeat_ms);
    }
  }
  return NULL;
}

int bt_control_open(bt_control_t **out, const bt_control_env_t *env) {
  int rc = 0;
  bt_control_t *c = calloc(1, sizeof *c);
  if (!c) return -ENOMEM;
  c->fd = env->fd;
  c->wake_fd = -1;
  c->stage = env->stage;
  c->incarnation = env->restart;
  c->heartbeat_ms = env->heartbeat_ms;
  atomic_store(&c->stop_step, -1);
  atomic_store(&c->ckpt_step, -1);
  atomic_store(&c->phase, BT_PHASE_INIT);
  pthread_mutex_init(&c->send_lock, NULL);
  pthread_mutex_init(&c->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  /* Deadlines are monotonic (clock.h); a wall-clock step must not fire them. */
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&c->cond, &ca);
  pthread_condattr_destroy(&ca);
  bt_buf_init(&c->send_buf);
  c->wake_fd = eventfd(0, EFD_CLOEXEC);
  if (c->wake_fd < 0) {
    rc = -errno;
    goto fail;
  }
  /* A supervisor that stops reading (frozen, not dead: no death signal)
   * must not block our sends forever; past this the channel is broken. */
  struct timeval tv = {.tv_sec = CONTROL_SEND_TIMEOUT_S};
  if (setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
    rc = -errno;
    goto fail;
  }
  bt_msg_hello_t hello = {.stage = c->stage, .incarnation = c->incarnation, .pid = getpid()};
  SEND_WITH(c, bt_msg_encode_hello(&c->send_buf, &hello));
  if (rc < 0) goto fail;
  if ((rc = -pthread_create(&c->thread, NULL, control_thread, c)) < 0) goto fail;
  c->thread_started = 1;
  *out = c;
  return 0;
fail:
  c->fd = -1; /* the caller still owns env->fd on failure */
  bt_control_close(c);
  return rc;
}

void bt_control_close(bt_control_t *c) {
  if (!c) return;
  if (c->thread_started) {
    uint64_t one = 1;
    while (write(c->wake_fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
    pthread_join(c->thread, NULL);
  }
  if (c->wake_fd >= 0) close(c->wake_fd);
  if (c->fd >= 0) close(c->fd);
  bt_buf_free(&c->send_buf);
  pthread_cond_destroy(&c->cond);
  pthread_mutex_destroy(&c->lock);
  pthread_mutex_destroy(&c->send_lock);
  free(c->rbuf);
  free(c);
}

void bt_control_progress(bt_control_t *c, int64_t step, int64_t action, bt_phase_t phase) {
  atomic_store(&c->step, step);
  atomic_store(&c->action, action);
  atomic_store(&c->phase, (int)phase);
}

void bt_control_action_done(bt_control_t *c) { atomic_fetch_add(&c->actions_done, 1); }

int bt_control_send_ready_gpu(bt_control_t *c, const char *addr, const char *gpu, const uint8_t *nccl_id) {
  bt_msg_ready_t m = {.stage = c->stage};
  if (strlen(addr) >= sizeof m.addr || (gpu && strlen(gpu) >= sizeof m.gpu)) return BT_EARG;
  snprintf(m.addr, sizeof m.addr, "%s", addr);
  if (gpu) snprintf(m.gpu, sizeof m.gpu, "%s", gpu);
  if (nccl_id) memcpy(m.nccl_id, nccl_id, sizeof m.nccl_id);
  int rc;
  SEND_WITH(c, bt_msg_encode_ready(&c->send_buf, &m));
  return rc;
}

int bt_control_send_ready(bt_control_t *c, const char *addr) { return bt_control_send_ready_gpu(c, addr, NULL, NULL); }

int bt_control_wait_start(bt_control_t *c, bt_msg_start_t *start, uint64_t deadline) {
  struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
                        .tv_nsec = (long)(deadline % 1000000000ull)};
  int rc = 0;
  pthread_mutex_lock(&c->lock);
  /* A broken channel never reaches here: the thread exits the process
   * (orphaned()), so only START or the deadline end this wait. */
  while (!c->have_start) {
    int r = pthread_cond_timedwait(&c->cond, &c->lock, &ts);
    if (r == ETIMEDOUT) {
      rc = BT_ETIMEOUT;
      break;
    }
  }
  if (rc == 0) *start = c->start;
  pthread_mutex_unlock(&c->lock);
  return rc;
}

int bt_control_send_metrics(bt_control_t *c, const bt_msg_metrics_t *m) {
  int rc;
  SEND_WITH(c, bt_msg_encode_metrics(&c->send_buf, m));
  return rc;
}

int bt_control_send_trace(bt_control_t *c, const bt_msg_trace_t *m) {
  int rc;
  SEND_WITH(c, bt_msg_encode_trace(&c->send_buf, m));
  return rc;
}

int bt_control_send_hashes(bt_control_t *c, const bt_msg_hashes_t *m) {
  int rc;
  SEND_WITH(c, bt_msg_encode_hashes(&c->send_buf, m));
  return rc;
}

int bt_control_send_error(bt_control_t *c, int code, int exit_code, const char *text) {
  bt_msg_error_t m = {.stage = c->stage, .code = code, .exit_code = exit_code};
  snprintf(m.text, sizeof m.text, "%s", text);
  int rc;
  SEND_WITH(c, bt_msg_encode_error(&c->send_buf, &m));
  return rc;
}

int bt_control_send_done(bt_control_t *c, int64_t step) {
  bt_msg_step_t m = {.step = step};
  int rc;
  SEND_WITH(c, bt_msg_encode_step(&c->send_buf, BT_MSG_DONE, &m));
  return rc;
}

int bt_control_send_shard(bt_control_t *c, const bt_msg_shard_t *m) {
  int rc;
  SEND_WITH(c, bt_msg_encode_shard(&c->send_buf, m));
  return rc;
}

int bt_control_send_ckpt_late(bt_control_t *c, int64_t step) {
  bt_msg_step_t m = {.step = step};
  int rc;
  SEND_WITH(c, bt_msg_encode_step(&c->send_buf, BT_MSG_CKPT_LATE, &m));
  return rc;
}

int64_t bt_control_stop_step(bt_control_t *c) { return atomic_load(&c->stop_step); }

int64_t bt_control_ckpt_step(bt_control_t *c) { return atomic_load(&c->ckpt_step); }

int bt_control_ckpt_due(bt_control_t *c, int64_t step, int64_t *handled) {
  int64_t at = bt_control_ckpt_step(c);
  /* A CKPT_AT still ahead is left for the step it names. */
  if (at <= 0 || at == *handled || at > step) return 0;
  *handled = at;
  if (at == step) return 1;
  bt_info("CKPT_AT %lld came after that step; last completed %lld", (long long)at, (long long)step);
  int rc = bt_control_send_ckpt_late(c, step);
  return rc < 0 ? rc : 0;
}
