/* data.c - see data.h. */
#include "common/data.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/file.h"

/* Distinct streams of the generator, so data, permutations and offsets
 * never reuse a counter. */
enum { STREAM_PERM = 0x7065726d, STREAM_START = 0x73746172, STREAM_NEXT = 0x6e657874,
       STREAM_OFFSET = 0x6f666673 };

struct bt_data {
  int K, T;
  uint64_t seed;
  int synthetic;
  /* synthetic: next = perm[newer][older] */
  uint8_t perm[BT_SYNTH_ALPHABET][BT_SYNTH_ALPHABET];
  /* file */
  uint8_t *bytes;
  size_t size;
  double entropy_rate, unigram;
};

static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t bt_rng(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  /* Each input passes through the finaliser before the next is folded in,
   * so (a, b, c) and permutations of it give unrelated outputs. */
  uint64_t h = mix(seed + 0x9e3779b97f4a7c15ULL);
  h = mix(h ^ (a + 0x9e3779b97f4a7c15ULL));
  h = mix(h ^ (b + 0x6a09e667f3bcc909ULL));
  h = mix(h ^ (c + 0xbb67ae8584caa73bULL));
  return h;
}

double bt_rng_unit(uint64_t r) { return (double)((r >> 11) + 1) * 0x1.0p-53; }

double bt_rng_normal(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t r = bt_rng(seed, a, b, c);
  double u1 = ((double)(r >> 32) + 1.0) * 0x1.0p-32;  /* (0, 1]: log is finite */
  double u2 = (double)(r & 0xffffffffULL) * 0x1.0p-32;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void build_synthetic(bt_data_t *d) {
  const int A = BT_SYNTH_ALPHABET;
  for (int b = 0; b < A; b++) {
    /* Fisher-Yates with the counter generator: a seeded permutation of the
     * older byte for each newer byte b. */
    for (int i = 0; i < A; i++) d->perm[b][i] = (uint8_t)i;
    for (int i = A - 1; i > 0; i--) {
      int j = (int)(bt_rng(d->seed, STREAM_PERM, (uint64_t)b, (uint64_t)i) % (uint64_t)(i + 1));
      uint8_t t = d->perm[b][i];
      d->perm[b][i] = d->perm[b][j];
      d->perm[b][j] = t;
    }
  }
  double eps = BT_SYNTH_EPS;
  double top = 1.0 - eps + eps / A, other = eps / A;
  d->entropy_rate = -top * log(top) - (A - 1) * other * log(other);
  d->unigram = log((double)A);
}

static int read_file(bt_data_t *d, const char *path, char *err, size_t errlen) {
  int fd;
  uint64_t fsize;
  int rc = bt_file_open(path, bt_file_limit(BT_FILE_DATA), &fd, &fsize);
  if (rc < 0) {
    bt_errf(err, errlen, "--data %s: %s", path, bt_strerror(rc));
    return rc;
  }
  struct stat sb = {.st_size = (off_t)fsize};
  size_t need = (size_t)d->K + (size_t)d->T + 1;
  if ((size_t)sb.st_size < need) {
    rc = BT_EARG;
    bt_errf(err, errlen, "--data %s: %lld bytes, need at least %zu (context + mb-tokens + 1)",
            path, (long long)sb.st_size, need);
    goto out;
  }
  d->size = (size_t)sb.st_size;
  d->bytes = malloc(d->size);
  if (!d->bytes) {
    rc = -ENOMEM;
    bt_errf(err, errlen, "--data %s: out of memory", path);
    goto out;
  }
  size_t got = 0;
  while (got < d->size) {
    ssize_t n = read(fd, d->bytes + got, d->size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      rc = n < 0 ? -errno : BT_EARG;
      bt_errf(err, errlen, "--data %s: %s", path, n < 0 ? strerror(errno) : "file shrank");
      goto out;
    }
    got += (size_t)n;
  }
  double counts[256] = {0};
  for (size_t i = 0; i < d->size; i++) counts[d->bytes[i]] += 1.0;
  double h = 0;
  for (int i = 0; i < 256; i++)
    if (counts[i] > 0) {
      double p = counts[i] / (double)d->size;
      h -= p * log(p);
    }
  d->unigram = h;
  d->entropy_rate = NAN;
out:
  close(fd);
  return rc;
}

int bt_data_open(const bt_model_config_t *m, bt_data_t **out, char *err, size_t errlen) {
  *out = NULL;
  bt_data_t *d = calloc(1, sizeof *d);
  if (!d) return -ENOMEM;
  d->K = m->context;
  d->T = m->mb_tokens;
  d->seed = (uint64_t)m->seed;
  int rc = 0;
  if (!strcmp(m->data, "synthetic")) {
    d->synthetic = 1;
    build_synthetic(d);
  } else {
    rc = read_file(d, m->data, err, errlen);
  }
  if (rc) {
    bt_data_close(d);
    return rc;
  }
  *out = d;
  return 0;
}

void bt_data_close(bt_data_t *d) {
  if (!d) return;
  free(d->bytes);
  free(d);
}

size_t bt_data_batch_bytes(const bt_data_t *d) { return (size_t)d->K + (size_t)d->T + 1; }

int bt_data_batch(const bt_data_t *d, int64_t step, int mb, uint8_t *buf) {
  if (step < 0 || mb < 0) return BT_EARG;
  size_t n = bt_data_batch_bytes(d);
  uint64_t s = (uint64_t)step, i = (uint64_t)mb;
  if (!d->synthetic) {
    uint64_t span = (uint64_t)(d->size - n) + 1;
    uint64_t off = bt_rng(d->seed, STREAM_OFFSET, s, i) % span;
    memcpy(buf, d->bytes + off, n);
    return 0;
  }
  const int A = BT_SYNTH_ALPHABET;
  /* The start pair is uniform, and the chain keeps every position uniform
   * (doubly stochastic), so all of the micro-batch is stationary. */
  uint64_t r = bt_rng(d->seed, STREAM_START, s, i);
  int older = (int)(r % (uint64_t)A), newer = (int)((r >> 32) % (uint64_t)A);
  uint8_t sym[2] = {(uint8_t)older, (uint8_t)newer};
  /* One key per micro-batch, then one counter per position. */
  uint64_t key = bt_rng(d->seed, STREAM_NEXT, s, i);
  for (size_t j = 0; j < n; j++) {
    int c;
    if (j < 2) {
      c = sym[j];
    } else {
      if (bt_rng_unit(bt_rng(key, (uint64_t)j, 0, 0)) <= 1.0 - BT_SYNTH_EPS)
        c = d->perm[newer][older];
      else
        c = (int)(bt_rng(key, (uint64_t)j, 1, 0) % (uint64_t)A);
      older = newer;
      newer = c;
    }
    buf[j] = (uint8_t)('a' + c);
  }
  return 0;
}

double bt_data_entropy_rate(const bt_data_t *d) { return d->entropy_rate; }
double bt_data_unigram_entropy(const bt_data_t *d) { return d->unigram; }
int bt_data_is_synthetic(const bt_data_t *d) { return d->synthetic; }
