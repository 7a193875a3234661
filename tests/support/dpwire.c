/* dpwire.c - see dpwire.h. */
#include "tests/support/dpwire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/auth.h"

void dpw_put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

uint32_t dpw_get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void dpw_proof(const uint8_t *key, size_t keylen, const char *label, uint32_t from, uint32_t to,
               const uint8_t first[DPW_NONCE], const uint8_t second[DPW_NONCE], uint8_t out[DPW_MAC]) {
  char ctx[64];
  int n = snprintf(ctx, sizeof ctx, "rank %u to rank %u", (unsigned)from, (unsigned)to);
  bt_bytes_t parts[4] = {{label, strlen(label) + 1}, {ctx, (size_t)n + 1}, {first, DPW_NONCE}, {second, DPW_NONCE}};
  bt_hmac_sha256(key, keylen, parts, 4, out);
}

void dpw_hello(uint8_t out[DPW_HELLO], uint32_t from, uint32_t to, const uint8_t nd[DPW_NONCE]) {
  dpw_put32(out, DPW_MAGIC_HELLO);
  out[4] = DPW_VERSION;
  out[5] = 0;
  out[6] = out[7] = 0;
  dpw_put32(out + 8, from);
  dpw_put32(out + 12, to);
  memcpy(out + 16, nd, DPW_NONCE);
}

int dpw_connect(const char *addr) {
  if (!strncmp(addr, "unix:@", 6)) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(addr + 6);
    if (n + 1 > sizeof sa.sun_path) {
      close(fd);
      return -1;
    }
    memcpy(sa.sun_path + 1, addr + 6, n);
    if (connect(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)) < 0) {
      close(fd);
      return -1;
    }
    return fd;
  }
  const char *c = strrchr(addr, ':');
  if (!c) return -1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(c + 1))};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int dpw_send(int fd, const void *buf, size_t n) {
  const uint8_t *p = buf;
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

long dpw_read(int fd, void *buf, size_t n, int ms) {
  uint8_t *p = buf;
  size_t got = 0;
  while (got < n) {
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int r = poll(&pf, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    ssize_t k = read(fd, p + got, n - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += (size_t)k;
  }
  return (long)got;
}

int dpw_dial(int fd, uint32_t from, uint32_t to, const uint8_t *key, size_t keylen, int check_acceptor,
             uint8_t hello_out[DPW_HELLO], uint8_t resp_out[DPW_RESP]) {
  uint8_t nd[DPW_NONCE], hello[DPW_HELLO], ch[DPW_CHAL], resp[DPW_RESP], want[DPW_MAC];
  if (bt_random_bytes(nd, sizeof nd) < 0) return -1;
  dpw_hello(hello, from, to, nd);
  if (hello_out) memcpy(hello_out, hello, sizeof hello);
  if (dpw_send(fd, hello, sizeof hello) < 0) return -1;
  if (dpw_read(fd, ch, sizeof ch, 5000) != (long)sizeof ch || dpw_get32(ch) != DPW_MAGIC_CHAL) return -1;
  const uint8_t *na = ch + 4;
  if (check_acceptor) {
    dpw_proof(key, keylen, "baton-dp-accept", from, to, nd, na, want);
    if (memcmp(want, ch + 4 + DPW_NONCE, DPW_MAC)) return -2;
  }
  dpw_put32(resp, DPW_MAGIC_RESP);
  dpw_proof(key, keylen, "baton-dp-dial", from, to, na, nd, resp + 4);
  if (resp_out) memcpy(resp_out, resp, sizeof resp);
  return dpw_send(fd, resp, sizeof resp);
}

int dpw_contains_window(const uint8_t *hay, size_t n, const uint8_t *needle, size_t nlen, size_t window) {
  if (window > nlen) window = nlen;
  for (size_t s = 0; s + window <= nlen; s++)
    for (size_t i = 0; i + window <= n; i++)
      if (!memcmp(hay + i, needle + s, window)) return 1;
  return 0;
}
