/* hash.c - see hash.h. */
#include "common/hash.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/error.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the parameter hash is defined on little-endian float32 bytes"
#endif

bt_hash128_t bt_hash_tensor(const float *data, size_t n) {
  XXH128_hash_t h = XXH3_128bits(data, n * sizeof(float));
  return (bt_hash128_t){.hi = h.high64, .lo = h.low64};
}

static int cmp_rec(const void *a, const void *b) {
  const bt_hash_rec_t *x = a, *y = b;
  if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
  if (x->index != y->index) return x->index < y->index ? -1 : 1;
  return 0;
}

static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

int bt_hash_combine(bt_hash_rec_t *recs, size_t n, bt_hash128_t *out) {
  qsort(recs, n, sizeof *recs, cmp_rec);
  for (size_t i = 1; i < n; i++)
    if (cmp_rec(&recs[i - 1], &recs[i]) == 0) return BT_EARG;
  XXH3_state_t *st = XXH3_createState();
  if (!st) return BT_EARG;
  XXH3_128bits_reset(st);
  for (size_t i = 0; i < n; i++) {
    unsigned char hdr[8];
    size_t len = strnlen(recs[i].name, BT_HASH_NAME_MAX);
    put_u32(hdr, recs[i].layer);
    put_u32(hdr + 4, (uint32_t)len);
    XXH3_128bits_update(st, hdr, sizeof hdr);
    XXH3_128bits_update(st, recs[i].name, len);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, (XXH128_hash_t){.low64 = recs[i].h.lo, .high64 = recs[i].h.hi});
    XXH3_128bits_update(st, c.digest, sizeof c.digest);
  }
  XXH128_hash_t h = XXH3_128bits_digest(st);
  XXH3_freeState(st);
  *out = (bt_hash128_t){.hi = h.high64, .lo = h.low64};
  return 0;
}

void bt_hash_hex(bt_hash128_t h, char out[33]) {
  snprintf(out, 33, "%016llx%016llx", (unsigned long long)h.hi, (unsigned long long)h.lo);
}

int bt_hash_parse(const char *hex, bt_hash128_t *out) {
  if (!hex || strlen(hex) != 32) return BT_EFORMAT;
  uint64_t part[2] = {0, 0};
  for (int i = 0; i < 32; i++) {
    char c = hex[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return BT_EFORMAT;
    part[i / 16] = (part[i / 16] << 4) | (uint64_t)d;
  }
  out->hi = part[0];
  out->lo = part[1];
  return 0;
}

void bt_random_id(char out[33]) {
  uint8_t r[16] = {0};
  ssize_t got = 0;
  while (got < (ssize_t)sizeof r) {
    ssize_t k = getrandom(r + got, sizeof r - (size_t)got, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += k;
  }
  if (got < (ssize_t)sizeof r) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t a = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec, b = (uint64_t)getpid();
    memcpy(r, &a, sizeof a);
    memcpy(r + sizeof a, &b, sizeof b);
  }
  for (size_t i = 0; i < sizeof r; i++) snprintf(out + 2 * i, 3, "%02x", r[i]);
}
