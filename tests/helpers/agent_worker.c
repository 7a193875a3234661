/* agent_worker.c - a worker the node agent's tests (tests/test_agent.c)
 * have the fake coordinator SPAWN. Raw bytes on the control channel (fd 3),
 * no worker/control.c: the agent relays bytes, it does not parse them.
 *
 *   agent_worker echo CODE   check its parent is BATON_SUPERVISOR_PID (else
 *                            exit 6); write a HELLO frame (stage from
 *                            BATON_STAGE, incarnation 0, its pid) to fd 3;
 *                            print "hello out" to stdout and, to stderr,
 *                            "sup=…", "token-sha=…" (SHA-256 of
 *                            BATON_JOB_TOKEN, hex: the token itself must
 *                            not reach the coordinator in the tail),
 *                            "given=…" (AGENT_TEST_VAR), "secret=…"
 *                            (BATON_SECRET), "inherited=…"
 *                            (AGENT_INHERITED) and "last line";
 *                            read up to 4096 bytes from fd 3 (10 s at
 *                            most), write them back, exit CODE
 *   agent_worker hang        fork a grandchild that sleeps (it holds the
 *                            pipes), write "gpid=N" to fd 3, ignore SIGTERM,
 *                            sleep until killed
 *   agent_worker big N       exit 0 at once, leaving a grandchild out of
 *                            its group (setsid) that writes N bytes to fd 3
 *                            (byte i = i * 7 mod 251) 0.3 s later
 *   agent_worker escape      fork a grandchild that leaves the group
 *                            (setsid) and keeps the pipes open for 30 s,
 *                            write "gpid=N" to fd 3, exit 0
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/frame.h"

static void put(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t k = write(fd, c, n);
    if (k <= 0) return;
    c += k;
    n -= (size_t)k;
  }
}

static const char *env_or(const char *name) {
  const char *v = getenv(name);
  return v ? v : "(unset)";
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (!strcmp(argv[1], "echo") && argc == 3) {
    const char *sp = getenv("BATON_SUPERVISOR_PID");
    if (!sp || atol(sp) != (long)getppid()) return 6;
    bt_buf_t b;
    bt_buf_init(&b);
    bt_msg_hello_t h = {.stage = (uint32_t)atoi(env_or("BATON_STAGE")), .incarnation = 0, .pid = getpid()};
    bt_msg_encode_hello(&b, &h);
    put(3, b.data, b.len);
    bt_buf_free(&b);
    printf("hello out\n");
    fflush(stdout);
    const char *tok = env_or("BATON_JOB_TOKEN");
    uint8_t d[BT_SHA256_LEN];
    bt_sha256(tok, strlen(tok), d);
    char hex[2 * BT_SHA256_LEN + 1];
    for (int i = 0; i < BT_SHA256_LEN; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    fprintf(stderr, "sup=%s\ntoken-sha=%s\ngiven=%s\nsecret=%s\ninherited=%s\nlast line\n", sp, hex,
            env_or("AGENT_TEST_VAR"), env_or("BATON_SECRET"), env_or("AGENT_INHERITED"));
    char buf[4096];
    struct pollfd p = {.fd = 3, .events = POLLIN};
    if (poll(&p, 1, 10000) == 1) {
      ssize_t k = read(3, buf, sizeof buf);
      if (k > 0) put(3, buf, (size_t)k);
    }
    return atoi(argv[2]);
  }
  if (!strcmp(argv[1], "hang")) {
    signal(SIGTERM, SIG_IGN);
    pid_t g = fork();
    if (g == 0) {
      for (;;) pause();
    }
    char line[64];
    int n = snprintf(line, sizeof line, "gpid=%ld", (long)g);
    put(3, line, (size_t)n);
    for (;;) pause();
  }
  if (!strcmp(argv[1], "big") && argc == 3) {
    size_t n = (size_t)atol(argv[2]);
    int ready[2];
    if (pipe(ready) < 0) return 1;
    pid_t g = fork();
    if (g < 0) return 1;
    if (g > 0) {
      /* exit once the grandchild left the group (the agent kills the group) */
      close(ready[1]);
      char c;
      while (read(ready[0], &c, 1) > 0) {
      }
      return 0;
    }
    /* a descendant out of the group writes after the worker's exit */
    setsid();
    close(ready[0]);
    close(ready[1]);
    close(1);
    close(2);
    usleep(300 * 1000);
    unsigned char *p = malloc(n);
    if (!p) _exit(1);
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 7 % 251);
    put(3, p, n);
    _exit(0);
  }
  if (!strcmp(argv[1], "escape")) {
    int ready[2];
    if (pipe(ready) < 0) return 1;
    pid_t g = fork();
    if (g == 0) {
      setsid();
      close(ready[0]);
      close(ready[1]); /* tells the parent the group is left */
      sleep(30);
      _exit(0);
    }
    close(ready[1]);
    char c;
    while (read(ready[0], &c, 1) > 0) {
    }
    char line[64];
    int n = snprintf(line, sizeof line, "gpid=%ld", (long)g);
    put(3, line, (size_t)n);
    return 0;
  }
  return 2;
}
