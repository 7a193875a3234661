/* auth.c - SHA-256, HMAC-SHA-256, the job secret and the proofs built on
 * them (see auth.h).
 *
 * SHA-256 follows FIPS 180-4 section 6.2 word for word and HMAC follows
 * RFC 2104; both are checked against the published vectors in
 * tests/test_auth.c. This is not a general crypto library: no streaming
 * HMAC, no other hashes, nothing the rendezvous does not need.
 *
 * The secret is handled so that it cannot leak through a message: every
 * `why` names the source (a path or a variable name) and never the bytes,
 * and the scratch buffers that held secret bytes are wiped with
 * explicit_bzero (a plain memset before return may be optimised away).
 */
#include "common/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"

/* ---- SHA-256 (FIPS 180-4) ---- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

/* One 64-byte block into the state (FIPS 180-4 6.2.2). */
static void compress(uint32_t h[8], const uint8_t blk[64]) {
  uint32_t w[64];
  for (int t = 0; t < 16; t++)
    w[t] = (uint32_t)blk[4 * t] << 24 | (uint32_t)blk[4 * t + 1] << 16 | (uint32_t)blk[4 * t + 2] << 8 |
           (uint32_t)blk[4 * t + 3];
  for (int t = 16; t < 64; t++) {
    uint32_t s0 = ror(w[t - 15], 7) ^ ror(w[t - 15], 18) ^ (w[t - 15] >> 3);
    uint32_t s1 = ror(w[t - 2], 17) ^ ror(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int t = 0; t < 64; t++) {
    uint32_t S1 = ror(e, 6) ^ ror(e, 11) ^ ror(e, 25);
    uint32_t ch = (e & f) ^ (~e & g);
    uint32_t t1 = hh + S1 + ch + K[t] + w[t];
    uint32_t S0 = ror(a, 2) ^ ror(a, 13) ^ ror(a, 22);
    uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    uint32_t t2 = S0 + maj;
    hh = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
  h[5] += f;
  h[6] += g;
  h[7] += hh;
  /* The schedule holds words of HMAC's padded key when hashing a key. */
  explicit_bzero(w, sizeof w);
}

void bt_sha256_init(bt_sha256_t *c) {
  static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(c->h, H0, sizeof H0);
  c->bytes = 0;
  c->fill = 0;
}

void bt_sha256_update(bt_sha256_t *c, const void *data, size_t n) {
  const uint8_t *p = data;
  c->bytes += n;
  if (c->fill) {
    size_t take = 64 - c->fill < n ? 64 - c->fill : n;
    memcpy(c->buf + c->fill, p, take);
    c->fill += take;
    p += take;
    n -= take;
    if (c->fill < 64) return;
    compress(c->h, c->buf);
    c->fill = 0;
  }
  for (; n >= 64; p += 64, n -= 64) compress(c->h, p);
  memcpy(c->buf, p, n);
  c->fill = n;
}

void bt_sha256_final(bt_sha256_t *c, uint8_t out[BT_SHA256_LEN]) {
  uint64_t bits = c->bytes * 8;
  /* Padding: 0x80, zeros up to 56 mod 64, the length in bits big-endian. */
  c->buf[c->fill++] = 0x80;
  if (c->fill > 56) {
    memset(c->buf + c->fill, 0, 64 - c->fill);
    compress(c->h, c->buf);
    c->fill = 0;
  }
  memset(c->buf + c->fill, 0, 56 - c->fill);
  for (int i = 0; i < 8; i++) c->buf[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
  compress(c->h, c->buf);
  for (int i = 0; i < 8; i++) {
    out[4 * i] = (uint8_t)(c->h[i] >> 24);
    out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
    out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
    out[4 * i + 3] = (uint8_t)c->h[i];
  }
  explicit_bzero(c, sizeof *c);
}

void bt_sha256(const void *data, size_t n, uint8_t out[BT_SHA256_LEN]) {
  bt_sha256_t c;
  bt_sha256_init(&c);
  bt_sha256_update(&c, data, n);
  bt_sha256_final(&c, out);
}

/* ---- HMAC-SHA-256 (RFC 2104) ---- */

void bt_hmac_sha256(const uint8_t *key, size_t keylen, const bt_bytes_t *parts, size_t nparts,
                    uint8_t out[BT_SHA256_LEN]) {
  uint8_t k[64] = {0}, pad[64], inner[BT_SHA256_LEN];
  /* A key longer than the block is replaced by its hash (RFC 2104 sec. 3). */
  if (keylen > 64)
    bt_sha256(key, keylen, k);
  else if (keylen)
    memcpy(k, key, keylen);
  bt_sha256_t c;
  for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
  bt_sha256_init(&c);
  bt_sha256_update(&c, pad, 64);
  for (size_t i = 0; i < nparts; i++)
    if (parts[i].n) bt_sha256_update(&c, parts[i].p, parts[i].n);
  bt_sha256_final(&c, inner);
  for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
  bt_sha256_init(&c);
  bt_sha256_update(&c, pad, 64);
  bt_sha256_update(&c, inner, sizeof inner);
  bt_sha256_final(&c, out);
  explicit_bzero(k, sizeof k);
  explicit_bzero(pad, sizeof pad);
  explicit_bzero(inner, sizeof inner);
}

int bt_ct_equal(const void *a, const void *b, size_t n) {
  const volatile uint8_t *x = a, *y = b;
  uint8_t d = 0;
  for (size_t i = 0; i < n; i++) d |= x[i] ^ y[i];
  return d == 0;
}

int bt_random_bytes(void *out, size_t n) {
  uint8_t *p = out;
  while (n) {
    /* getrandom returns short counts for large requests and can be
     * interrupted by a signal before the pool is ready: loop on both. */
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* ---- the job secret ---- */

/* Reads at most cap bytes of fd into buf; *got the count. 0 or -errno. */
static int read_upto(int fd, uint8_t *buf, size_t cap, size_t *got) {
  size_t n = 0;
  while (n < cap) {
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  *got = n;
  return 0;
}

/* The secret from a file. The mode is checked on the opened descriptor
 * (fstat), so a file swapped between a stat and the open cannot slip a
 * group-readable secret past the check. */
static int load_file(const char *path, bt_secret_t *s, char *why, size_t whylen) {
  snprintf(s->source, sizeof s->source, "file %s", path);
  int fd;
  /* O_NONBLOCK: opening a FIFO for reading would otherwise wait, without
   * a deadline, for a writer; it is refused below as not a regular file. */
  do fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    int e = errno;
    bt_errf(why, whylen, "cannot open secret file %s: %s", path, strerror(e));
    /* -ENOENT is reserved for "no secret configured at all": a named file
     * that is missing is a configuration error the caller must not read
     * as "run without authentication". */
    return e == ENOENT ? BT_EARG : -e;
  }
  int rc = 0;
  /* Room for the largest secret plus "\r\n" plus one byte to detect more. */
  uint8_t buf[BT_SECRET_MAX + 3];
  size_t n = 0;
  struct stat st;
  if (fstat(fd, &st) < 0) {
    rc = -errno;
    bt_errf(why, whylen, "cannot stat secret file %s: %s", path, strerror(-rc));
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = BT_EARG;
    bt_errf(why, whylen, "secret file %s is not a regular file", path);
    goto out;
  }
  if (st.st_mode & 077) {
    rc = BT_EARG;
    bt_errf(why, whylen, "secret file %s is readable by group or others (mode %04o): run chmod 600 %s", path,
            (unsigned)(st.st_mode & 07777), path);
    goto out;
  }
  rc = read_upto(fd, buf, sizeof buf, &n);
  if (rc) {
    bt_errf(why, whylen, "cannot read secret file %s: %s", path, strerror(-rc));
    goto out;
  }
  if (n >= 2 && buf[n - 2] == '\r' && buf[n - 1] == '\n')
    n -= 2;
  else if (n >= 1 && buf[n - 1] == '\n')
    n -= 1;
  if (n < BT_SECRET_MIN || n > BT_SECRET_MAX) {
    rc = BT_EARG;
    if (n < BT_SECRET_MIN)
      bt_errf(why, whylen, "secret in file %s is %zu bytes, shorter than %d", path, n, BT_SECRET_MIN);
    else
      bt_errf(why, whylen, "secret in file %s is longer than %d bytes", path, BT_SECRET_MAX);
    goto out;
  }
  memcpy(s->key, buf, n);
  s->len = n;
out:
  explicit_bzero(buf, sizeof buf);
  close(fd);
  return rc;
}

int bt_secret_load(const char *file, bt_secret_t *s, char *why, size_t whylen) {
  explicit_bzero(s, sizeof *s);
  int rc;
  if (file) {
    rc = load_file(file, s, why, whylen);
  } else if (getenv("BATON_SECRET_FILE")) {
    const char *path = getenv("BATON_SECRET_FILE");
    if (!*path) {
      /* Likely BATON_SECRET_FILE=$(something that printed nothing). */
      bt_errf(why, whylen, "BATON_SECRET_FILE is set but empty");
      rc = BT_EARG;
    } else {
      rc = load_file(path, s, why, whylen);
    }
  } else if (getenv("BATON_SECRET")) {
    const char *v = getenv("BATON_SECRET");
    size_t n = strlen(v);
    snprintf(s->source, sizeof s->source, "BATON_SECRET");
    if (n < BT_SECRET_MIN) {
      bt_errf(why, whylen, "BATON_SECRET is %zu bytes, shorter than %d", n, BT_SECRET_MIN);
      rc = BT_EARG;
    } else if (n > BT_SECRET_MAX) {
      bt_errf(why, whylen, "BATON_SECRET is longer than %d bytes", BT_SECRET_MAX);
      rc = BT_EARG;
    } else {
      memcpy(s->key, v, n);
      s->len = n;
      rc = 0;
    }
  } else {
    bt_errf(why, whylen, "no secret: give --secret-file, BATON_SECRET_FILE or BATON_SECRET");
    return -ENOENT;
  }
  if (rc) {
    /* Keep the source for the caller's message, drop any partial key. */
    explicit_bzero(s->key, sizeof s->key);
    s->len = 0;
  }
  return rc;
}

/* ---- proofs and derived keys ---- */

void bt_auth_proof(const bt_secret_t *s, const char *label, const char *context, const uint8_t a[BT_NONCE_LEN],
                   const uint8_t b[BT_NONCE_LEN], uint8_t out[BT_SHA256_LEN]) {
  if (!context) context = "";
  /* The NULs are part of the message: without them ("ab","c") and
   * ("a","bc") would prove the same thing. */
  bt_bytes_t parts[] = {
      {label, strlen(label) + 1},
      {context, strlen(context) + 1},
      {a, BT_NONCE_LEN},
      {b, BT_NONCE_LEN},
  };
  bt_hmac_sha256(s->key, s->len, parts, sizeof parts / sizeof parts[0], out);
}

void bt_auth_derive_hex(const bt_secret_t *s, const char *label, char out[2 * BT_SHA256_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  static const char tag[] = "baton-derive"; /* sizeof includes the NUL */
  bt_bytes_t parts[] = {{tag, sizeof tag}, {label, strlen(label)}};
  uint8_t mac[BT_SHA256_LEN];
  bt_hmac_sha256(s->key, s->len, parts, 2, mac);
  for (int i = 0; i < BT_SHA256_LEN; i++) {
    out[2 * i] = hex[mac[i] >> 4];
    out[2 * i + 1] = hex[mac[i] & 15];
  }
  out[2 * BT_SHA256_LEN] = 0;
  explicit_bzero(mac, sizeof mac);
}
