/* test_model.c - the model description, data, layers, chunks and stages:
 * gradients against finite differences, B == I then W, the determinism
 * contract across chunk splits, pure initialisation, order-free hashing. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/data.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/model.h"
#include "kernels/backend.h"
#include "kernels/model.h"
#include "worker/stage.h"

static bt_model_config_t tiny(int layers) {
  bt_config_t c;
  bt_config_defaults(&c);
  c.model.layers = layers;
  c.model.dim = 8;
  c.model.context = 2;
  c.model.microbatches = 3;
  c.model.mb_tokens = 5;
  c.model.seed = 11;
  c.model.warmup = 2;
  c.model.lr = 0.01;
  return c.model;
}

static bt_backend_t *cpu(void) {
  bt_backend_t *be = NULL;
  cr_assert_eq(bt_backend_cpu_create(&be), 0);
  return be;
}

static bt_stage_t *stage(bt_backend_t *be, const bt_model_config_t *m, const bt_layer_range_t *r,
                         int n) {
  bt_stage_t *st = NULL;
  char err[256] = "";
  int rc = bt_stage_create(be, m, r, n, &st, err, sizeof err);
  cr_assert_eq(rc, 0, "stage: %s (%s)", bt_strerror(rc), err);
  return st;
}

static bt_stage_t *whole(bt_backend_t *be, const bt_model_config_t *m) {
  bt_layer_range_t r = {0, m->layers + 1};
  return stage(be, m, &r, 1);
}

/* All parameters (or m, v) of a stage as host floats, in tensor order. */
static float *all_tensors(bt_stage_t *st, size_t *n) {
  size_t total = 0, k = bt_stage_tensor_count(st);
  for (size_t i = 0; i < k; i++) {
    bt_stage_tensor_t t;
    bt_stage_tensor(st, i, &t);
    total += t.count;
  }
  float *out = malloc(total * sizeof(float));
  size_t off = 0;
  for (size_t i = 0; i < k; i++) {
    bt_stage_tensor_t t;
    bt_stage_tensor(st, i, &t);
    cr_assert_eq(bt_stage_tensor_get(st, i, out + off), 0);
    off += t.count;
  }
  *n = total;
  return out;
}

static void step_fb(bt_stage_t *st, int64_t s, int M) {
  cr_assert_eq(bt_stage_begin_step(st, s), 0);
  for (int mb = 0; mb < M; mb++) {
    cr_assert_eq(bt_stage_forward(st, 0, mb), 0);
    cr_assert_eq(bt_stage_backward(st, 0, mb), 0);
  }
}

/* ---- description ---- */

Test(model, layers_tensors_and_declared_order) {
  bt_model_config_t m = tiny(3);
  cr_assert_eq(bt_model_layer_count(&m), 5);
  bt_layer_desc_t d;
  cr_assert_eq(bt_model_layer(&m, 0, &d), 0);
  cr_assert_str_eq(d.type_name, "embed");
  cr_assert_eq(d.tensors[0].count, (size_t)2 * 256 * 8);
  cr_assert_eq(bt_model_layer(&m, 2, &d), 0);
  cr_assert_str_eq(d.type_name, "block");
  const char *names[] = {"ln_w", "ln_b", "w1", "b1", "w2", "b2"};
  size_t counts[] = {8, 8, 32 * 8, 32, 8 * 32, 8};
  cr_assert_eq(d.ntensors, 6);
  for (int i = 0; i < 6; i++) {
    cr_assert_str_eq(d.tensors[i].name, names[i]);
    cr_assert_eq(d.tensors[i].count, counts[i], "%s", names[i]);
  }
  cr_assert_eq(bt_model_layer(&m, 4, &d), 0);
  cr_assert_str_eq(d.type_name, "head");
  cr_assert_str_eq(d.tensors[2].name, "wout");
  cr_assert_eq(d.tensors[2].shape[0], 256);
  cr_assert_eq(bt_model_layer(&m, 5, &d), BT_EARG);
  cr_assert_eq(bt_model_param_count(&m), 2 * 256 * 8 + 3 * (8 + 8 + 256 + 32 + 256 + 8) +
                                             (8 + 8 + 256 * 8));
}

/* Largest stage cost of a split, and the best over all splits (brute force). */
static double worst(const bt_model_config_t *m, const int *counts, int n) {
  double w = 0;
  int first = 0;
  for (int s = 0; s < n; s++) {
    double c = bt_model_range_cost(m, first, first + counts[s] - 1);
    w = c > w ? c : w;
    first += counts[s];
  }
  return w;
}

static double best(const bt_model_config_t *m, int first, int nstages) {
  int nl = bt_model_layer_count(m);
  if (nstages == 1) return bt_model_range_cost(m, first, nl - 1);
  double b = INFINITY;
  for (int end = first; end <= nl - nstages; end++) {
    double here = bt_model_range_cost(m, first, end);
    double rest = best(m, end + 1, nstages - 1);
    double w = here > rest ? here : rest;
    b = w < b ? w : b;
  }
  return b;
}

Test(model, balanced_layout_is_optimal_and_deterministic) {
  for (int L = 1; L <= 9; L++) {
    bt_model_config_t m = tiny(L);
    m.dim = 16 + 8 * (L % 3);
    int nl = L + 2;
    for (int n = 1; n <= nl; n++) {
      int a[16], b[16];
      cr_assert_eq(bt_model_layout_balanced(&m, n, a), 0);
      cr_assert_eq(bt_model_layout_balanced(&m, n, b), 0);
      cr_assert_eq(memcmp(a, b, sizeof(int) * (size_t)n), 0);
      int sum = 0;
      for (int s = 0; s < n; s++) {
        cr_assert_geq(a[s], 1, "L=%d n=%d stage %d empty", L, n, s);
        sum += a[s];
      }
      cr_assert_eq(sum, nl);
      double w = worst(&m, a, n), opt = best(&m, 0, n);
      cr_assert_leq(w, opt * (1 + 1e-9), "L=%d n=%d: %g vs optimum %g", L, n, w, opt);
    }
    int c[16];
    cr_assert_eq(bt_model_layout_balanced(&m, nl + 1, c), BT_EARG);
  }
}

Test(model, layout_parse_checks_coverage) {
  bt_model_config_t m = tiny(4); /* 6 layers */
  int counts[8], n = 0;
  char err[256];
  cr_assert_eq(bt_model_layout_parse(&m, "2,3,1", 0, counts, 8, &n, err, sizeof err), 0, "%s",
               err);
  cr_assert_eq(n, 3);
  cr_assert_eq(counts[1], 3);
  cr_assert_eq(bt_model_layout_parse(&m, "2,3,1", 4, counts, 8, &n, err, sizeof err), BT_EARG);
  cr_assert_eq(bt_model_layout_parse(&m, "2,3", 0, counts, 8, &n, err, sizeof err), BT_EARG);
  cr_assert(strstr(err, "covers 5 layers") != NULL, "%s", err);
  cr_assert_eq(bt_model_layout_parse(&m, "2,0,4", 0, counts, 8, &n, err, sizeof err), BT_EARG);
  cr_assert_eq(bt_model_layout_parse(&m, "2,x,4", 0, counts, 8, &n, err, sizeof err), BT_EARG);
}

Test(model, memory_estimate_is_what_chunks_allocate) {
  bt_model_config_t m = tiny(3);
  bt_backend_t *be = cpu();
  const int ranges[][2] = {{0, 4}, {0, 0}, {1, 2}, {4, 4}, {2, 4}, {0, 3}};
  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
    int f = ranges[i][0], l = ranges[i][1];
    bt_chunk_t *c = NULL;
    cr_assert_eq(bt_chunk_create(be, &m, f, l, m.microbatches, &c), 0);
    uint64_t est = bt_model_activation_floats(&m, f, l);
    uint64_t data = (f == 0 || l == m.layers + 1) ? (m.context + m.mb_tokens + 1 + 3) / 4 : 0;
    cr_assert_eq(c->act_floats, (est - data) * (uint64_t)m.microbatches, "layers %d..%d: %zu vs %llu",
                 f, l, c->act_floats, (unsigned long long)((est - data) * m.microbatches));
    bt_chunk_destroy(c);
  }
  bt_backend_destroy(be);
}

/* ---- data ---- */

Test(data, batches_are_pure_functions_of_seed_step_microbatch) {
  bt_model_config_t m = tiny(1);
  bt_data_t *a, *b;
  char err[256];
  cr_assert_eq(bt_data_open(&m, &a, err, sizeof err), 0);
  cr_assert_eq(bt_data_open(&m, &b, err, sizeof err), 0);
  size_t n = bt_data_batch_bytes(a);
  cr_assert_eq(n, (size_t)(m.context + m.mb_tokens + 1));
  uint8_t x[64], y[64], z[64];
  bt_data_batch(a, 7, 2, x);
  bt_data_batch(b, 7, 2, y);
  cr_assert_eq(memcmp(x, y, n), 0);
  bt_data_batch(a, 7, 1, z);
  cr_assert_neq(memcmp(x, z, n), 0);
  bt_data_close(a);
  bt_data_close(b);
}

Test(data, synthetic_entropy_rate_matches_the_stream) {
  /* Empirical conditional entropy of the next byte given the two before it,
   * over many micro-batches, against the exact value baton computes. */
  bt_model_config_t m = tiny(1);
  m.mb_tokens = 200;
  bt_data_t *d;
  char err[256];
  cr_assert_eq(bt_data_open(&m, &d, err, sizeof err), 0);
  static double joint[256][256][16];
  memset(joint, 0, sizeof joint);
  double uni[16] = {0}, total = 0;
  uint8_t buf[256];
  for (int s = 0; s < 400; s++) {
    bt_data_batch(d, s, 0, buf);
    for (int j = 2; j < 200; j++) {
      cr_assert(buf[j] >= 'a' && buf[j] < 'a' + BT_SYNTH_ALPHABET);
      joint[buf[j - 2]][buf[j - 1]][buf[j] - 'a'] += 1;
      uni[buf[j] - 'a'] += 1;
      total += 1;
    }
  }
  double h = 0, hu = 0;
  for (int a = 0; a < 256; a++)
    for (int b = 0; b < 256; b++) {
      double n = 0;
      for (int c = 0; c < 16; c++) n += joint[a][b][c];
      for (int c = 0; c < 16; c++)
        if (joint[a][b][c] > 0) h -= joint[a][b][c] / total * log(joint[a][b][c] / n);
    }
  for (int c = 0; c < 16; c++)
    if (uni[c] > 0) hu -= uni[c] / total * log(uni[c] / total);
  double rate = bt_data_entropy_rate(d), unigram = bt_data_unigram_entropy(d);
  cr_assert_lt(fabs(h - rate), 0.03, "empirical %g vs exact %g", h, rate);
  cr_assert_lt(fabs(hu - unigram), 0.01, "empirical unigram %g vs %g", hu, unigram);
  cr_assert_lt(rate, 0.25 * unigram, "the entropy rate should be far below the unigram entropy");
  bt_data_close(d);
}

Test(data, bad_files_are_refused_with_a_reason) {
  bt_model_config_t m = tiny(1);
  bt_data_t *d = NULL;
  char err[256] = "";
  snprintf(m.data, sizeof m.data, "/nonexistent/baton-data");
  cr_assert_neq(bt_data_open(&m, &d, err, sizeof err), 0);
  cr_assert(strstr(err, "/nonexistent/baton-data") != NULL, "%s", err);
  char path[] = "/tmp/bt_data_shortXXXXXX";
  int fd = mkstemp(path);
  cr_assert_eq(write(fd, "abc", 3), 3);
  close(fd);
  snprintf(m.data, sizeof m.data, "%s", path);
  cr_assert_eq(bt_data_open(&m, &d, err, sizeof err), BT_EARG);
  cr_assert(strstr(err, "need at least") != NULL, "%s", err);
  unlink(path);
}

/* ---- gradients ---- */

static double stage_loss(bt_stage_t *st, int M) {
  cr_assert_eq(bt_stage_begin_step(st, 0), 0);
  for (int mb = 0; mb < M; mb++) cr_assert_eq(bt_stage_forward(st, 0, mb), 0);
  double loss;
  cr_assert_eq(bt_stage_loss(st, &loss), 0);
  return loss;
}

Test(model, gradient_matches_central_finite_differences) {
  bt_model_config_t m = tiny(2);
  bt_backend_t *be = cpu();
  bt_stage_t *st = whole(be, &m);
  bt_chunk_t *c = bt_stage_chunk(st, 0);
  step_fb(st, 0, m.microbatches);
  float *grads = malloc(c->nparams * sizeof(float));
  cr_assert_eq(be->ops->to_host(be, grads, c->grads, c->nparams * sizeof(float)), 0);
  int checked = 0;
  for (size_t ti = 0; ti < bt_stage_param_tensor_count(st); ti++) {
    bt_stage_tensor_t t;
    bt_stage_tensor(st, ti, &t);
    float *p = malloc(t.count * sizeof(float));
    bt_stage_tensor_get(st, ti, p);
    const float *g = grads + t.offset;
    /* The 3 largest gradients of the tensor and 3 spread-out elements. */
    size_t pick[6];
    int np = 0;
    for (int k = 0; k < 3; k++) {
      size_t bi = 0;
      float bv = -1;
      for (size_t i = 0; i < t.count; i++) {
        int taken = 0;
        for (int q = 0; q < np; q++) taken |= pick[q] == i;
        if (!taken && fabsf(g[i]) > bv) bv = fabsf(g[i]), bi = i;
      }
      pick[np++] = bi;
    }
    for (int k = 0; k < 3; k++) pick[np++] = (t.count * (size_t)(2 * k + 1)) / 7;
    for (int q = 0; q < np; q++) {
      size_t i = pick[q];
      float orig = p[i];
      const float h = 2e-3f;
      p[i] = orig + h;
      bt_stage_tensor_set(st, ti, p);
      double lp = stage_loss(st, m.microbatches);
      p[i] = orig - h;
      bt_stage_tensor_set(st, ti, p);
      double lm = stage_loss(st, m.microbatches);
      p[i] = orig;
      bt_stage_tensor_set(st, ti, p);
      double fd = (lp - lm) / (double)((orig + h) - (orig - h));
      double tol = 5e-5 + 1e-2 * fabs(fd);
      cr_assert_leq(fabs(fd - g[i]), tol, "layer %d %s[%zu]: analytic %.6g vs finite diff %.6g",
                    t.layer, t.name, i, g[i], fd);
      checked++;
    }
    free(p);
  }
  cr_assert_eq(checked, 6 * (1 + 2 * 6 + 3));
  free(grads);
  bt_stage_destroy(st);
  bt_backend_destroy(be);
}

/* ---- bits ---- */

static void expect_same_bits(bt_stage_t *a, bt_stage_t *b, const char *what) {
  size_t na, nb;
  float *x = all_tensors(a, &na), *y = all_tensors(b, &nb);
  cr_assert_eq(na, nb);
  size_t first = na;
  for (size_t i = 0; i < na && first == na; i++)
    if (memcmp(&x[i], &y[i], sizeof(float))) first = i;
  cr_assert_eq(first, na, "%s: float %zu differs: %.9g vs %.9g", what, first,
               first < na ? x[first] : 0, first < na ? y[first] : 0);
  free(x);
  free(y);
}

Test(stage, full_backward_equals_input_then_weight_bit_for_bit) {
  bt_model_config_t m = tiny(2);
  bt_backend_t *be = cpu();
  bt_stage_t *a = whole(be, &m), *b = whole(be, &m);
  for (int s = 0; s < 3; s++) {
    step_fb(a, s, m.microbatches);
    /* b: every I as soon as possible, every W deferred to the end of the
     * step (the zero-bubble order), W still in micro-batch order. */
    cr_assert_eq(bt_stage_begin_step(b, s), 0);
    for (int mb = 0; mb < m.microbatches; mb++) {
      cr_assert_eq(bt_stage_forward(b, 0, mb), 0);
      cr_assert_eq(bt_stage_backward_input(b, 0, mb), 0);
    }
    for (int mb = 0; mb < m.microbatches; mb++)
      cr_assert_eq(bt_stage_backward_weight(b, 0, mb), 0);
    bt_chunk_t *ca = bt_stage_chunk(a, 0), *cb = bt_stage_chunk(b, 0);
    cr_assert_eq(memcmp(ca->grads, cb->grads, ca->nparams * sizeof(float)), 0,
                 "gradients differ at step %d", s);
    cr_assert_eq(bt_stage_optimizer_step(a), 0);
    cr_assert_eq(bt_stage_optimizer_step(b), 0);
  }
  expect_same_bits(a, b, "B vs I+W");
  bt_stage_destroy(a);
  bt_stage_destroy(b);
  bt_backend_destroy(be);
}

/* Drives a stage whose chunks each hold a contiguous part of the model, in
 * layer order, like a pipeline: all forwards (GPipe order), copying each
 * chunk's output into the next chunk's input, then all backwards in reverse
 * chunk order, copying gradients back. */
static void pipeline_step(bt_backend_t *be, bt_stage_t *st, int64_t s, int M) {
  int n = bt_stage_nchunks(st);
  size_t bytes = bt_stage_act_bytes(st);
  cr_assert_eq(bt_stage_begin_step(st, s), 0);
  for (int mb = 0; mb < M; mb++)
    for (int c = 0; c < n; c++) {
      if (c > 0) be->ops->copy(be, bt_stage_act_in(st, c, mb), bt_stage_act_out(st, c - 1, mb), bytes);
      cr_assert_eq(bt_stage_forward(st, c, mb), 0);
    }
  for (int mb = 0; mb < M; mb++)
    for (int c = n - 1; c >= 0; c--) {
      if (c < n - 1)
        be->ops->copy(be, bt_stage_grad_in(st, c, mb), bt_stage_grad_out(st, c + 1, mb), bytes);
      cr_assert_eq(bt_stage_backward(st, c, mb), 0);
    }
  cr_assert_eq(bt_stage_optimizer_step(st), 0);
}

Test(stage, any_split_into_chunks_gives_the_same_bits) {
  bt_model_config_t m = tiny(3); /* layers 0..4 */
  bt_backend_t *be = cpu();
  bt_stage_t *one = whole(be, &m);
  const bt_layer_range_t splits[][5] = {
      {{0, 0}, {1, 2}, {3, 4}},
      {{0, 0}, {1, 1}, {2, 2}, {3, 3}, {4, 4}},
      {{0, 3}, {4, 4}},
  };
  const int nsplit[] = {3, 5, 2};
  bt_stage_t *split[3];
  for (int k = 0; k < 3; k++) split[k] = stage(be, &m, splits[k], nsplit[k]);
  for (int s = 0; s < 4; s++) {
    step_fb(one, s, m.microbatches);
    cr_assert_eq(bt_stage_optimizer_step(one), 0);
    double l1;
    cr_assert_eq(bt_stage_loss(one, &l1), 0);
    for (int k = 0; k < 3; k++) {
      pipeline_step(be, split[k], s, m.microbatches);
      double lk;
      cr_assert_eq(bt_stage_loss(split[k], &lk), 0);
      cr_assert_eq(memcmp(&l1, &lk, sizeof l1), 0, "split %d step %d: loss %.17g vs %.17g", k,
                   s, lk, l1);
    }
  }
  for (int k = 0; k < 3; k++) {
    expect_same_bits(one, split[k], "split vs one chunk");
    bt_stage_destroy(split[k]);
  }
  bt_stage_destroy(one);
  bt_backend_destroy(be);
}

static void hash_of(bt_stage_t **st, int n, int reverse, char hex[33]) {
  bt_hash_rec_t recs[64];
  size_t total = 0;
  for (int k = 0; k < n; k++) {
    size_t got = 0;
    bt_stage_t *s = st[reverse ? n - 1 - k : k];
    cr_assert_eq(bt_stage_hash_records(s, recs + total, 64 - total, &got), 0);
    total += got;
  }
  if (reverse)
    for (size_t i = 0; i < total / 2; i++) {
      bt_hash_rec_t t = recs[i];
      recs[i] = recs[total - 1 - i];
      recs[total - 1 - i] = t;
    }
  bt_hash128_t h;
  cr_assert_eq(bt_hash_combine(recs, total, &h), 0);
  bt_hash_hex(h, hex);
}

Test(stage, interleaved_placement_over_two_stages_gives_the_same_bits) {
  /* Virtual stages k = c*p + s with p = 2, v = 2: stage 0 holds virtual
   * stages 0 and 2, stage 1 holds 1 and 3; driven 1F1B-like per
   * micro-batch with W deferred, buffers copied between the stages. */
  bt_model_config_t m = tiny(4); /* layers 0..5 */
  bt_backend_t *be = cpu();
  bt_stage_t *one = whole(be, &m);
  const bt_layer_range_t r0[] = {{0, 1}, {3, 4}}, r1[] = {{2, 2}, {5, 5}};
  bt_stage_t *s0 = stage(be, &m, r0, 2), *s1 = stage(be, &m, r1, 2);
  struct {
    bt_stage_t *st;
    int chunk;
  } vs[4] = {{s0, 0}, {s1, 0}, {s0, 1}, {s1, 1}};
  size_t bytes = bt_stage_act_bytes(s0);
  for (int s = 0; s < 3; s++) {
    step_fb(one, s, m.microbatches);
    cr_assert_eq(bt_stage_optimizer_step(one), 0);
    cr_assert_eq(bt_stage_begin_step(s0, s), 0);
    cr_assert_eq(bt_stage_begin_step(s1, s), 0);
    for (int mb = 0; mb < m.microbatches; mb++) {
      for (int k = 0; k < 4; k++) {
        if (k > 0)
          be->ops->copy(be, bt_stage_act_in(vs[k].st, vs[k].chunk, mb),
                        bt_stage_act_out(vs[k - 1].st, vs[k - 1].chunk, mb), bytes);
        cr_assert_eq(bt_stage_forward(vs[k].st, vs[k].chunk, mb), 0);
      }
      for (int k = 3; k >= 0; k--) {
        if (k < 3)
          be->ops->copy(be, bt_stage_grad_in(vs[k].st, vs[k].chunk, mb),
                        bt_stage_grad_out(vs[k + 1].st, vs[k + 1].chunk, mb), bytes);
        cr_assert_eq(bt_stage_backward_input(vs[k].st, vs[k].chunk, mb), 0);
      }
    }
    for (int k = 0; k < 4; k++)
      for (int mb = 0; mb < m.microbatches; mb++)
        cr_assert_eq(bt_stage_backward_weight(vs[k].st, vs[k].chunk, mb), 0);
    cr_assert_eq(bt_stage_optimizer_step(s0), 0);
    cr_assert_eq(bt_stage_optimizer_step(s1), 0);
  }
  double l1, l2;
  cr_assert_eq(bt_stage_loss(one, &l1), 0);
  cr_assert_eq(bt_stage_loss(s1, &l2), 0);
  cr_assert_eq(memcmp(&l1, &l2, sizeof l1), 0, "%.17g vs %.17g", l1, l2);
  cr_assert_eq(bt_stage_loss(s0, &l2), BT_EARG, "stage 0 has no head");
  char h1[33], h2[33];
  bt_stage_t *parts[2] = {s0, s1};
  hash_of(&one, 1, 0, h1);
  hash_of(parts, 2, 1, h2);
  cr_assert_str_eq(h1, h2);
  bt_stage_destroy(s1);
  bt_stage_destroy(s0);
  bt_stage_destroy(one);
  bt_backend_destroy(be);
}

Test(stage, initialisation_is_a_pure_function_of_the_layer) {
  bt_model_config_t m = tiny(3);
  bt_backend_t *be = cpu();
  bt_stage_t *all = whole(be, &m);
  bt_layer_range_t r = {2, 2};
  bt_stage_t *alone = stage(be, &m, &r, 1);
  size_t n = bt_stage_param_tensor_count(alone);
  cr_assert_eq(n, 6);
  for (size_t i = 0; i < n; i++) {
    bt_stage_tensor_t ta, tw;
    bt_stage_tensor(alone, i, &ta);
    size_t j = 0;
    for (; j < bt_stage_param_tensor_count(all); j++) {
      bt_stage_tensor(all, j, &tw);
      if (tw.layer == ta.layer && tw.index == ta.index) break;
    }
    cr_assert_eq(tw.layer, 2);
    float *x = malloc(ta.count * sizeof(float)), *y = malloc(ta.count * sizeof(float));
    bt_stage_tensor_get(alone, i, x);
    bt_stage_tensor_get(all, j, y);
    cr_assert_eq(memcmp(x, y, ta.count * sizeof(float)), 0, "%s", ta.name);
    free(x);
    free(y);
  }
  /* A different seed gives different weights. */
  bt_model_config_t m2 = m;
  m2.seed++;
  bt_stage_t *other = stage(be, &m2, &r, 1);
  float a[256], b[256];
  bt_stage_tensor_get(alone, 2, a);
  bt_stage_tensor_get(other, 2, b);
  cr_assert_neq(memcmp(a, b, sizeof a), 0);
  bt_stage_destroy(other);
  bt_stage_destroy(alone);
  bt_stage_destroy(all);
  bt_backend_destroy(be);
}

Test(stage, hash_does_not_depend_on_who_holds_or_visits_tensors) {
  bt_model_config_t m = tiny(3);
  bt_backend_t *be = cpu();
  bt_stage_t *one = whole(be, &m);
  bt_layer_range_t r[3] = {{0, 1}, {2, 2}, {3, 4}};
  bt_stage_t *parts[3];
  for (int k = 0; k < 3; k++) parts[k] = stage(be, &m, &r[k], 1);
  char h1[33], h2[33], h3[33];
  hash_of(&one, 1, 0, h1);
  hash_of(parts, 3, 0, h2);
  hash_of(parts, 3, 1, h3);
  cr_assert_str_eq(h1, h2);
  cr_assert_str_eq(h1, h3);
  /* and it sees a change in any one tensor */
  float x[32]; /* layer 2's b1: (4D) = 32 */
  bt_stage_tensor_t t;
  bt_stage_tensor(parts[1], 3, &t);
  cr_assert_eq(t.count, 32);
  bt_stage_tensor_get(parts[1], 3, x);
  x[5] += 1.0f;
  bt_stage_tensor_set(parts[1], 3, x);
  hash_of(parts, 3, 0, h2);
  cr_assert_str_neq(h1, h2);
  for (int k = 0; k < 3; k++) bt_stage_destroy(parts[k]);
  bt_stage_destroy(one);
  bt_backend_destroy(be);
}

Test(stage, learning_rate_schedule) {
  bt_model_config_t m = tiny(1);
  m.lr = 1.0;
  m.warmup = 4;
  m.lr_decay_steps = 14;
  cr_assert_float_eq(bt_stage_lr(&m, 0), 0.25, 1e-12);
  cr_assert_float_eq(bt_stage_lr(&m, 3), 1.0, 1e-12);
  cr_assert_float_eq(bt_stage_lr(&m, 4), 1.0, 1e-12);
  cr_assert_float_eq(bt_stage_lr(&m, 9), 0.55, 1e-12);
  cr_assert_float_eq(bt_stage_lr(&m, 14), 0.1, 1e-12);
  cr_assert_float_eq(bt_stage_lr(&m, 1000000), 0.1, 1e-12);
}

Test(stage, actions_out_of_step_are_refused) {
  bt_model_config_t m = tiny(1);
  bt_backend_t *be = cpu();
  bt_stage_t *st = whole(be, &m);
  cr_assert_eq(bt_stage_forward(st, 0, 0), BT_EARG, "forward before begin_step");
  cr_assert_eq(bt_stage_begin_step(st, 1), BT_EARG, "step 1 before step 0");
  cr_assert_eq(bt_stage_begin_step(st, 0), 0);
  cr_assert_eq(bt_stage_forward(st, 0, m.microbatches), BT_EARG);
  cr_assert_eq(bt_stage_forward(st, 1, 0), BT_EARG);
  double loss;
  cr_assert_eq(bt_stage_loss(st, &loss), BT_EARG, "loss before every forward");
  cr_assert_eq(bt_stage_backward_input(st, 0, 0), BT_ESCHEDULE, "I before F");
  cr_assert_eq(bt_stage_forward(st, 0, 0), 0);
  cr_assert_eq(bt_stage_forward(st, 0, 0), BT_ESCHEDULE, "F twice");
  cr_assert_eq(bt_stage_backward_weight(st, 0, 0), BT_ESCHEDULE, "W before I");
  cr_assert_eq(bt_stage_forward(st, 0, 1), 0);
  cr_assert_eq(bt_stage_backward_input(st, 0, 1), 0);
  cr_assert_eq(bt_stage_backward_weight(st, 0, 1), BT_ESCHEDULE, "W of mb 1 before mb 0");
  cr_assert_eq(bt_stage_optimizer_step(st), BT_ESCHEDULE, "update before every W");
  bt_stage_destroy(st);
  bt_backend_destroy(be);
}

/* ---- set-up ends: nothing is allocated in training ---- */

static void train_steps(bt_stage_t *st, int M, int steps) {
  for (int s = 0; s < steps; s++) {
    cr_assert_eq(bt_stage_begin_step(st, s), 0);
    for (int mb = 0; mb < M; mb++) cr_assert_eq(bt_stage_forward(st, 0, mb), 0);
    for (int mb = 0; mb < M; mb++) cr_assert_eq(bt_stage_backward(st, 0, mb), 0);
    cr_assert_eq(bt_stage_optimizer_step(st), 0);
  }
}

/* On CUDA an allocation (or the cudaFree of a scratch that grows) in a
 * step synchronises the whole device and can deadlock against NCCL's
 * kernels; the CPU backend keeps the same rules and the same counter, so
 * the rule is checked here. */
Test(model, a_sealed_stage_allocates_nothing_in_training) {
  bt_model_config_t m = tiny(2);
  m.dim = 32;
  /* Unsealed, the first step grows the scratch: the counter sees it. */
  bt_backend_t *be = cpu();
  bt_stage_t *st = whole(be, &m);
  uint64_t before = be->allocs;
  train_steps(st, m.microbatches, 1);
  cr_assert_gt(be->allocs, before, "an unsealed step allocated nothing: the counter is blind");
  bt_stage_destroy(st);
  bt_backend_destroy(be);

  be = cpu();
  st = whole(be, &m);
  before = be->allocs;
  cr_assert_eq(bt_stage_seal(st), 0);
  cr_assert(be->sealed);
  cr_assert_eq(be->allocs, before + 1, "seal should size the scratch once: %llu allocations",
               (unsigned long long)(be->allocs - before));
  uint64_t sealed = be->allocs;
  train_steps(st, m.microbatches, 3);
  cr_assert_eq(be->allocs, sealed, "%llu allocations during 3 steps after set-up",
               (unsigned long long)(be->allocs - sealed));
  /* And an allocation after set-up is refused, not performed. */
  void *p = NULL;
  cr_assert_eq(be->ops->alloc(be, &p, 64), BT_EUNSUPPORTED);
  cr_assert_null(p);
  cr_assert_eq(be->allocs, sealed);
  bt_stage_destroy(st);
  bt_backend_destroy(be);
}

Test(model, the_scratch_bound_covers_every_shape_of_the_model) {
  /* Unsealed runs at several shapes: whatever the ops grew the scratch
   * to, seal's bound is at least as large, so a sealed run never needs
   * more. */
  const int dims[] = {8, 24, 64};
  const int contexts[] = {1, 3};
  for (int i = 0; i < 3; i++)
    for (int k = 0; k < 2; k++) {
      bt_model_config_t m = tiny(1);
      m.dim = dims[i];
      m.context = contexts[k];
      bt_backend_t *be = cpu();
      bt_stage_t *st = whole(be, &m);
      cr_assert_eq(bt_stage_seal(st), 0, "D=%d K=%d", m.dim, m.context);
      train_steps(st, m.microbatches, 1);
      bt_stage_destroy(st);
      bt_backend_destroy(be);
    }
}

/* --math against BATON_CUDA_MATH: a backend that reports the conflict
 * (the CUDA backend's set_math returns BT_ECONFIG when the variable names
 * another mode) makes the stage refuse with one line naming both. */
static int conflicting_set_math(bt_backend_t *be, const char *mode) {
  (void)be, (void)mode;
  return BT_ECONFIG;
}

Test(model, math_conflicting_with_baton_cuda_math_is_refused_in_one_line) {
  bt_backend_t *be = cpu();
  bt_backend_ops_t ops = *be->ops;
  const bt_backend_ops_t *orig = be->ops;
  ops.set_math = conflicting_set_math;
  be->ops = &ops;
  setenv("BATON_CUDA_MATH", "tf32", 1);
  bt_model_config_t m = tiny(1);
  bt_layer_range_t r = {0, m.layers + 1};
  bt_stage_t *st = NULL;
  char err[256] = "";
  int rc = bt_stage_create(be, &m, &r, 1, &st, err, sizeof err);
  unsetenv("BATON_CUDA_MATH");
  cr_assert_eq(rc, BT_ECONFIG, "got %d", rc);
  cr_assert_null(st);
  cr_assert_str_eq(err, "--math fp32 conflicts with BATON_CUDA_MATH=tf32: give one of them");
  be->ops = orig;
  bt_backend_destroy(be);
}
