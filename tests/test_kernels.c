/* test_kernels.c - the CPU backend against double-precision references.
 *
 * Forward ops are compared with plain double-precision loops; backward ops
 * with central finite differences of a double-precision reference of
 * L = sum(r * out) for a random r, so a wrong formula shows as a wrong
 * gradient, not as agreement with another copy of the same formula. Also:
 * "+=" semantics of every weight-gradient op, I-then-W equals a full
 * backward, extreme logits, AdamW over several steps, same bits twice, and
 * odd sizes (N = 7, C = 13, OC = 5) throughout.
 */
#include <cblas.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/gelu.h"

/* ---- helpers ---- */

static uint64_t rng_state;

static uint64_t rng_next(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rnd(void) { return (float)((rng_next() >> 40) * 0x1p-23 - 1.0); }

static float *frand(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof *p);
  cr_assert(p);
  for (size_t i = 0; i < n; i++) p[i] = rnd();
  return p;
}

static float *fzeros(size_t n) {
  float *p = calloc(n ? n : 1, sizeof *p);
  cr_assert(p);
  return p;
}

static double *to_double(const float *x, size_t n) {
  double *d = malloc((n ? n : 1) * sizeof *d);
  cr_assert(d);
  for (size_t i = 0; i < n; i++) d[i] = x[i];
  return d;
}

static double *dzeros(size_t n) {
  double *p = calloc(n ? n : 1, sizeof *p);
  cr_assert(p);
  return p;
}

static bt_backend_t *cpu(void) {
  bt_backend_t *be = NULL;
  char why[256];
  int rc = bt_backend_create("cpu", 0, &be, why, sizeof why);
  cr_assert_eq(rc, 0, "cpu backend: %s (%s)", bt_strerror(rc), why);
  cr_assert_str_eq(be->ops->name, "cpu");
  return be;
}

/* |got - want| <= atol + rtol |want| for every element, naming the first
 * that is not. */
static void check_close(const char *what, const float *got, const double *want, size_t n,
                        double atol, double rtol) {
  for (size_t i = 0; i < n; i++) {
    double err = fabs((double)got[i] - want[i]);
    cr_assert(err <= atol + rtol * fabs(want[i]), "%s[%zu]: got %.9g, want %.9g (err %.3g)", what,
              i, (double)got[i], want[i], err);
  }
}

static void check_bits(const char *what, const float *a, const float *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    cr_assert(memcmp(&a[i], &b[i], sizeof(float)) == 0, "%s[%zu]: %.9g vs %.9g (bits differ)",
              what, i, (double)a[i], (double)b[i]);
}

/* Central differences of loss() with respect to each x[i]. The references
 * are smooth and in double, so h = 1e-5 leaves errors near 1e-10. */
typedef double (*loss_fn)(void *st);

static void fd_grad(loss_fn loss, void *st, double *x, size_t n, double *g) {
  const double h = 1e-5;
  for (size_t i = 0; i < n; i++) {
    double save = x[i];
    x[i] = save + h;
    double lp = loss(st);
    x[i] = save - h;
    double lm = loss(st);
    x[i] = save;
    g[i] = (lp - lm) / (2 * h);
  }
}

static double dot(const double *r, const double *x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += r[i] * x[i];
  return s;
}

/* ---- double-precision references ---- */

static void embed_ref(double *out, const double *tables, const uint8_t *ctx, int T, int K, int D) {
  for (int t = 0; t < T; t++)
    for (int d = 0; d < D; d++) {
      double s = 0;
      for (int k = 0; k < K; k++) s += tables[((size_t)k * 256 + ctx[t + K - 1 - k]) * D + d];
      out[(size_t)t * D + d] = s;
    }
}

static void layernorm_ref(double *out, double *mean, double *rstd, const double *inp,
                          const double *w, const double *b, int N, int C) {
  for (int n = 0; n < N; n++) {
    const double *x = inp + (size_t)n * C;
    double m = 0, v = 0;
    for (int i = 0; i < C; i++) m += x[i];
    m /= C;
    for (int i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
    v /= C;
    double rs = 1 / sqrt(v + 1e-5);
    for (int i = 0; i < C; i++) out[(size_t)n * C + i] = (x[i] - m) * rs * w[i] + b[i];
    if (mean) mean[n] = m;
    if (rstd) rstd[n] = rs;
  }
}

static void matmul_ref(double *out, const double *inp, const double *w, const double *bias, int N,
                       int C, int OC) {
  for (int n = 0; n < N; n++)
    for (int o = 0; o < OC; o++) {
      double s = bias ? bias[o] : 0;
      for (int c = 0; c < C; c++) s += inp[(size_t)n * C + c] * w[(size_t)o * C + c];
      out[(size_t)n * OC + o] = s;
    }
}

static double gelu_ref(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }

static void crossentropy_ref(double *losses, double *probs, const double *logits,
                             const uint8_t *targets, int N, int V) {
  for (int n = 0; n < N; n++) {
    const double *x = logits + (size_t)n * V;
    double mx = x[0], s = 0;
    for (int i = 1; i < V; i++) mx = fmax(mx, x[i]);
    for (int i = 0; i < V; i++) s += exp(x[i] - mx);
    for (int i = 0; probs && i < V; i++) probs[(size_t)n * V + i] = exp(x[i] - mx) / s;
    losses[n] = log(s) - (x[targets[n]] - mx);
  }
}

/* ---- embedding ---- */

enum { ET = 7, EK = 3, ED = 5 };

typedef struct {
  double *tables, *r;
  const uint8_t *ctx;
} embed_st;

static double embed_loss(void *p) {
  embed_st *s = p;
  double out[ET * ED];
  embed_ref(out, s->tables, s->ctx, ET, EK, ED);
  return dot(s->r, out, ET * ED);
}

/* Bytes from a three-letter alphabet, so positions share table rows. */
static void repeated_bytes(uint8_t *ctx, size_t n) {
  static const uint8_t abc[3] = {3, 7, 200};
  for (size_t i = 0; i < n; i++) ctx[i] = abc[rng_next() % 3];
}

Test(kernels, embed_forward_matches_reference) {
  rng_state = 1;
  bt_backend_t *be = cpu();
  size_t nt = (size_t)EK * 256 * ED;
  float *tables = frand(nt), *out = fzeros(ET * ED);
  uint8_t ctx[ET + EK];
  for (int i = 0; i < ET + EK; i++) ctx[i] = (uint8_t)(rng_next() & 255);
  cr_assert_eq(be->ops->embed_forward(be, out, tables, ctx, ET, EK, ED), 0);
  double *dt = to_double(tables, nt), want[ET * ED];
  embed_ref(want, dt, ctx, ET, EK, ED);
  check_close("embed out", out, want, ET * ED, 1e-6, 1e-6);
  free(tables), free(out), free(dt);
  bt_backend_destroy(be);
}

Test(kernels, embed_backward_with_repeated_bytes_matches_finite_differences) {
  rng_state = 2;
  bt_backend_t *be = cpu();
  size_t nt = (size_t)EK * 256 * ED;
  uint8_t ctx[ET + EK];
  repeated_bytes(ctx, ET + EK);
  float *dout = frand(ET * ED), *dtables = fzeros(nt), *tables = frand(nt);
  cr_assert_eq(be->ops->embed_backward_weight(be, dtables, dout, ctx, ET, EK, ED), 0);
  embed_st s = {to_double(tables, nt), to_double(dout, ET * ED), ctx};
  double *g = dzeros(nt);
  fd_grad(embed_loss, &s, s.tables, nt, g);
  check_close("dtables", dtables, g, nt, 1e-5, 1e-5);
  /* The alphabet's rows got several positions each; the rest stay zero. */
  size_t nonzero = 0;
  for (size_t i = 0; i < nt; i++) nonzero += dtables[i] != 0.0f;
  cr_assert_leq(nonzero, (size_t)EK * 3 * ED);
  cr_assert_gt(nonzero, 0);
  free(dout), free(dtables), free(tables), free(s.tables), free(s.r), free(g);
  bt_backend_destroy(be);
}

/* ---- layernorm ---- */

enum { LN = 7, LC = 13 };

typedef struct {
  double *inp, *w, *b, *r;
} ln_st;

static double ln_loss(void *p) {
  ln_st *s = p;
  double out[LN * LC];
  layernorm_ref(out, NULL, NULL, s->inp, s->w, s->b, LN, LC);
  return dot(s->r, out, LN * LC);
}

Test(kernels, layernorm_forward_matches_reference) {
  rng_state = 3;
  bt_backend_t *be = cpu();
  float *inp = frand(LN * LC), *w = frand(LC), *b = frand(LC);
  float *out = fzeros(LN * LC), mean[LN], rstd[LN];
  /* A row with a large offset: the statistics must not lose it. */
  for (int i = 0; i < LC; i++) inp[i] += 1000.0f;
  cr_assert_eq(be->ops->layernorm_forward(be, out, mean, rstd, inp, w, b, LN, LC), 0);
  double *di = to_double(inp, LN * LC), *dw = to_double(w, LC), *db = to_double(b, LC);
  double want[LN * LC], wm[LN], wr[LN];
  layernorm_ref(want, wm, wr, di, dw, db, LN, LC);
  check_close("ln out", out, want, LN * LC, 2e-5, 1e-5);
  check_close("ln mean", mean, wm, LN, 1e-6, 1e-6);
  check_close("ln rstd", rstd, wr, LN, 1e-6, 1e-5);
  free(inp), free(w), free(b), free(out), free(di), free(dw), free(db);
  bt_backend_destroy(be);
}

Test(kernels, layernorm_backward_matches_finite_differences) {
  rng_state = 4;
  bt_backend_t *be = cpu();
  float *inp = frand(LN * LC), *w = frand(LC), *b = frand(LC), *dout = frand(LN * LC);
  float *out = fzeros(LN * LC), mean[LN], rstd[LN];
  float *dinp = fzeros(LN * LC), *dw = fzeros(LC), *db = fzeros(LC);
  cr_assert_eq(be->ops->layernorm_forward(be, out, mean, rstd, inp, w, b, LN, LC), 0);
  cr_assert_eq(be->ops->layernorm_backward_input(be, dinp, dout, inp, w, mean, rstd, LN, LC), 0);
  cr_assert_eq(be->ops->layernorm_backward_weight(be, dw, db, dout, inp, mean, rstd, LN, LC), 0);
  ln_st s = {to_double(inp, LN * LC), to_double(w, LC), to_double(b, LC), to_double(dout, LN * LC)};
  double gi[LN * LC], gw[LC], gb[LC];
  fd_grad(ln_loss, &s, s.inp, LN * LC, gi);
  fd_grad(ln_loss, &s, s.w, LC, gw);
  fd_grad(ln_loss, &s, s.b, LC, gb);
  check_close("ln dinp", dinp, gi, LN * LC, 1e-4, 1e-4);
  check_close("ln dweight", dw, gw, LC, 1e-4, 1e-4);
  check_close("ln dbias", db, gb, LC, 1e-4, 1e-4);
  free(inp), free(w), free(b), free(dout), free(out), free(dinp), free(dw), free(db);
  free(s.inp), free(s.w), free(s.b), free(s.r);
  bt_backend_destroy(be);
}

/* ---- matmul ---- */

enum { MN = 7, MC = 13, MO = 5 };

typedef struct {
  double *inp, *w, *bias, *r;
} mm_st;

static double mm_loss(void *p) {
  mm_st *s = p;
  double out[MN * MO];
  matmul_ref(out, s->inp, s->w, s->bias, MN, MC, MO);
  return dot(s->r, out, MN * MO);
}

Test(kernels, matmul_forward_matches_reference_with_and_without_bias) {
  rng_state = 5;
  bt_backend_t *be = cpu();
  float *inp = frand(MN * MC), *w = frand(MO * MC), *bias = frand(MO), *out = fzeros(MN * MO);
  double *di = to_double(inp, MN * MC), *dw = to_double(w, MO * MC), *db = to_double(bias, MO);
  double want[MN * MO];
  cr_assert_eq(be->ops->matmul_forward(be, out, inp, w, bias, MN, MC, MO), 0);
  matmul_ref(want, di, dw, db, MN, MC, MO);
  check_close("mm out", out, want, MN * MO, 1e-5, 1e-5);
  cr_assert_eq(be->ops->matmul_forward(be, out, inp, w, NULL, MN, MC, MO), 0);
  matmul_ref(want, di, dw, NULL, MN, MC, MO);
  check_close("mm out (no bias)", out, want, MN * MO, 1e-5, 1e-5);
  cr_assert_eq(be->ops->matmul_forward(be, out, inp, w, NULL, -1, MC, MO), BT_EARG);
  free(inp), free(w), free(bias), free(out), free(di), free(dw), free(db);
  bt_backend_destroy(be);
}

Test(kernels, matmul_backward_matches_finite_differences) {
  rng_state = 6;
  bt_backend_t *be = cpu();
  float *inp = frand(MN * MC), *w = frand(MO * MC), *bias = frand(MO), *dout = frand(MN * MO);
  float *dinp = fzeros(MN * MC), *dw = fzeros(MO * MC), *db = fzeros(MO);
  float *dw2 = fzeros(MO * MC);
  cr_assert_eq(be->ops->matmul_backward_input(be, dinp, dout, w, MN, MC, MO), 0);
  cr_assert_eq(be->ops->matmul_backward_weight(be, dw, db, dout, inp, MN, MC, MO), 0);
  cr_assert_eq(be->ops->matmul_backward_weight(be, dw2, NULL, dout, inp, MN, MC, MO), 0);
  mm_st s = {to_double(inp, MN * MC), to_double(w, MO * MC), to_double(bias, MO),
             to_double(dout, MN * MO)};
  double gi[MN * MC], gw[MO * MC], gb[MO];
  fd_grad(mm_loss, &s, s.inp, MN * MC, gi);
  fd_grad(mm_loss, &s, s.w, MO * MC, gw);
  fd_grad(mm_loss, &s, s.bias, MO, gb);
  check_close("mm dinp", dinp, gi, MN * MC, 1e-5, 1e-5);
  check_close("mm dweight", dw, gw, MO * MC, 1e-5, 1e-5);
  check_close("mm dbias", db, gb, MO, 1e-5, 1e-5);
  check_bits("mm dweight without dbias", dw2, dw, MO * MC);
  free(inp), free(w), free(bias), free(dout), free(dinp), free(dw), free(db), free(dw2);
  free(s.inp), free(s.w), free(s.bias), free(s.r);
  bt_backend_destroy(be);
}

/* ---- GELU, residual, accumulate ---- */

enum { GN = 37 };

typedef struct {
  double *x, *r;
} gelu_st;

static double gelu_loss(void *p) {
  gelu_st *s = p;
  double l = 0;
  for (int i = 0; i < GN; i++) l += s->r[i] * gelu_ref(s->x[i]);
  return l;
}

Test(kernels, gelu_matches_reference_and_finite_differences) {
  rng_state = 7;
  bt_backend_t *be = cpu();
  float *x = frand(GN), *dout = frand(GN), *out = fzeros(GN), *dinp = fzeros(GN);
  for (int i = 0; i < GN; i++) x[i] *= 4.0f; /* cover the tails too */
  cr_assert_eq(be->ops->gelu_forward(be, out, x, GN), 0);
  double want[GN];
  for (int i = 0; i < GN; i++) want[i] = gelu_ref(x[i]);
  check_close("gelu out", out, want, GN, 1e-6, 1e-6);
  cr_assert_eq(be->ops->gelu_backward(be, dinp, x, dout, GN), 0);
  gelu_st s = {to_double(x, GN), to_double(dout, GN)};
  double g[GN];
  fd_grad(gelu_loss, &s, s.x, GN, g);
  check_close("gelu dinp", dinp, g, GN, 1e-5, 1e-5);
  /* dinp may alias dout. */
  float *alias = malloc(GN * sizeof *alias);
  memcpy(alias, dout, GN * sizeof *alias);
  cr_assert_eq(be->ops->gelu_backward(be, alias, x, alias, GN), 0);
  check_bits("gelu in place", alias, dinp, GN);
  free(x), free(dout), free(out), free(dinp), free(alias), free(s.x), free(s.r);
  bt_backend_destroy(be);
}

/* ---- GELU over the whole float range, against long double ---- */

/* |got - ref| in units of float's spacing at ref (2^-149 below the normal
 * range); Inf when one is NaN or infinite and the other is not the same. */
static double ulp_error(float got, long double ref) {
  if (isnan(ref)) return isnan(got) ? 0 : INFINITY;
  if (isinf(ref) || isinf(got) || isnan(got)) return (long double)got == ref ? 0 : INFINITY;
  int e = 0;
  if (ref != 0) frexpl(ref, &e); /* |ref| = m 2^e, m in [0.5, 1) */
  int lead = ref != 0 ? e - 1 : -126;
  long double ulp = ldexpl(1.0L, (lead < -126 ? -126 : lead) - 23);
  return (double)(fabsl((long double)got - ref) / ulp);
}

static long double phi_ref(long double x) { return 0.5L * erfcl(-x / sqrtl(2.0L)); }

/* The limits at +-Inf (gelu.h); NaN stays NaN. */
static long double gelu_ref_ld(float x) {
  if (isinf(x)) return x > 0 ? (long double)INFINITY : -0.0L;
  return (long double)x * phi_ref(x);
}

static long double dgelu_ref_ld(float x) {
  if (isinf(x)) return x > 0 ? 1.0L : 0.0L;
  long double X = x;
  return phi_ref(X) + X * expl(-X * X / 2) / sqrtl(2.0L * 3.14159265358979323846264338327950288L);
}

/* Every 1021st bit pattern of the 2^32 (all signs and binades, both tails,
 * subnormals, Inf and NaN) plus the special values themselves. */
enum { GSTRIDE = 1021 };

static size_t gelu_sweep(float *x) {
  size_t n = 0;
  for (uint64_t b = 0; b < (1ull << 32); b += GSTRIDE) {
    uint32_t u = (uint32_t)b;
    memcpy(&x[n++], &u, sizeof u);
  }
  const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 0x1p-149f, -0x1p-149f,
                           0x1p-126f, -0x1p-126f, 3.4028235e38f, -3.4028235e38f, -14.2f,
                           -14.85f, -14.9f, -0.7517915f, 1e-20f, -1e-20f, 5.0f, -5.0f};
  for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) x[n++] = special[i];
  return n;
}

Test(kernels, gelu_forward_within_ulp_bound_over_the_float_range, .timeout = 120) {
  bt_backend_t *be = cpu();
  size_t cap = (1ull << 32) / GSTRIDE + 64;
  float *x = malloc(cap * sizeof *x), *out = malloc(cap * sizeof *out);
  cr_assert(x && out);
  size_t n = gelu_sweep(x);
  cr_assert_eq(be->ops->gelu_forward(be, out, x, n), 0);
  double worst = 0;
  float at = 0;
  for (size_t i = 0; i < n; i++) {
    double e = ulp_error(out[i], gelu_ref_ld(x[i]));
    if (e > worst) worst = e, at = x[i];
  }
  cr_log_info("gelu forward: max %.6f ulp at x = %a over %zu inputs", worst, at, n);
  cr_assert(worst <= BT_GELU_ULP_BOUND, "gelu(%a) off by %.4f ulp > %.2f", at, worst,
            BT_GELU_ULP_BOUND);
  float lim[2] = {-INFINITY, INFINITY}, got[2];
  cr_assert_eq(be->ops->gelu_forward(be, got, lim, 2), 0);
  cr_assert(got[0] == 0 && signbit(got[0]) && got[1] == INFINITY, "gelu(-+Inf) = %g %g", got[0],
            got[1]);
  free(x), free(out);
  bt_backend_destroy(be);
}

Test(kernels, gelu_backward_within_ulp_bound_over_the_float_range, .timeout = 120) {
  bt_backend_t *be = cpu();
  size_t cap = (1ull << 32) / GSTRIDE + 64;
  float *x = malloc(cap * sizeof *x), *dout = malloc(cap * sizeof *dout);
  float *dinp = malloc(cap * sizeof *dinp);
  cr_assert(x && dout && dinp);
  size_t n = gelu_sweep(x);
  rng_state = 21;
  /* dout = 1 on even elements (gelu' itself), random on odd ones. */
  for (size_t i = 0; i < n; i++) dout[i] = i % 2 ? 4 * rnd() : 1.0f;
  cr_assert_eq(be->ops->gelu_backward(be, dinp, x, dout, n), 0);
  double worst = 0;
  float at = 0;
  for (size_t i = 0; i < n; i++) {
    double e = ulp_error(dinp[i], dgelu_ref_ld(x[i]) * dout[i]);
    if (e > worst) worst = e, at = x[i];
  }
  cr_log_info("gelu backward: max %.6f ulp at x = %a over %zu inputs", worst, at, n);
  cr_assert(worst <= BT_GELU_ULP_BOUND, "gelu'(%a) off by %.4f ulp > %.2f", at, worst,
            BT_GELU_ULP_BOUND);
  float lim[3] = {-INFINITY, INFINITY, NAN}, ones[3] = {1, 1, 1}, got[3];
  cr_assert_eq(be->ops->gelu_backward(be, got, lim, ones, 3), 0);
  cr_assert(got[0] == 0 && got[1] == 1 && isnan(got[2]), "gelu'(-Inf, Inf, NaN) = %g %g %g",
            got[0], got[1], got[2]);
  free(x), free(dout), free(dinp);
  bt_backend_destroy(be);
}

Test(kernels, residual_and_accumulate_add_elementwise) {
  rng_state = 8;
  bt_backend_t *be = cpu();
  float *a = frand(GN), *b = frand(GN), *out = fzeros(GN);
  cr_assert_eq(be->ops->residual_forward(be, out, a, b, GN), 0);
  for (int i = 0; i < GN; i++) cr_assert_eq(out[i], a[i] + b[i]);
  float *acc = malloc(GN * sizeof *acc);
  memcpy(acc, a, GN * sizeof *acc);
  cr_assert_eq(be->ops->accumulate(be, acc, b, GN), 0);
  check_bits("accumulate", acc, out, GN);
  cr_assert_eq(be->ops->residual_forward(be, a, a, b, GN), 0); /* out aliases a */
  check_bits("residual in place", a, out, GN);
  free(a), free(b), free(out), free(acc);
  bt_backend_destroy(be);
}

/* ---- cross-entropy ---- */

enum { CN = 7, CV = 11 };

typedef struct {
  double *logits;
  const uint8_t *targets;
  double scale;
} ce_st;

static double ce_loss(void *p) {
  ce_st *s = p;
  double losses[CN], l = 0;
  crossentropy_ref(losses, NULL, s->logits, s->targets, CN, CV);
  for (int n = 0; n < CN; n++) l += s->scale * losses[n];
  return l;
}

Test(kernels, crossentropy_matches_reference_and_finite_differences) {
  rng_state = 9;
  bt_backend_t *be = cpu();
  float *logits = frand(CN * CV), losses[CN], *probs = fzeros(CN * CV), *dl = fzeros(CN * CV);
  for (int i = 0; i < CN * CV; i++) logits[i] *= 5.0f;
  uint8_t targets[CN];
  for (int n = 0; n < CN; n++) targets[n] = (uint8_t)(rng_next() % CV);
  cr_assert_eq(be->ops->crossentropy_forward(be, losses, probs, logits, targets, CN, CV), 0);
  ce_st s = {to_double(logits, CN * CV), targets, 1.0 / (CN * 3)};
  double wl[CN], wp[CN * CV], g[CN * CV];
  crossentropy_ref(wl, wp, s.logits, targets, CN, CV);
  check_close("ce losses", losses, wl, CN, 1e-5, 1e-5);
  check_close("ce probs", probs, wp, CN * CV, 1e-6, 1e-5);
  cr_assert_eq(be->ops->crossentropy_backward(be, dl, probs, targets, (float)s.scale, CN, CV), 0);
  fd_grad(ce_loss, &s, s.logits, CN * CV, g);
  check_close("ce dlogits", dl, g, CN * CV, 1e-6, 1e-4);
  targets[0] = CV; /* out of range */
  cr_assert_eq(be->ops->crossentropy_forward(be, losses, probs, logits, targets, CN, CV), BT_EARG);
  free(logits), free(probs), free(dl), free(s.logits);
  bt_backend_destroy(be);
}

Test(kernels, crossentropy_with_extreme_logits_stays_finite) {
  bt_backend_t *be = cpu();
  enum { N = 4, V = 256 };
  float *logits = fzeros(N * V), losses[N], *probs = fzeros(N * V), *dl = fzeros(N * V);
  for (int i = 0; i < V; i++) {
    logits[0 * V + i] = i == 5 ? 1e30f : -1e30f; /* target 5: certain */
    logits[1 * V + i] = i == 9 ? 1e30f : -1e30f; /* target 0: hopeless */
    logits[2 * V + i] = 88.0f + (float)i;       /* exp overflows without the max shift */
    logits[3 * V + i] = -1e4f;                  /* all equal and very negative */
  }
  uint8_t targets[N] = {5, 0, 255, 17};
  cr_assert_eq(be->ops->crossentropy_forward(be, losses, probs, logits, targets, N, V), 0);
  cr_assert_eq(be->ops->crossentropy_backward(be, dl, probs, targets, 0.25f, N, V), 0);
  size_t bad = 1;
  cr_assert_eq(be->ops->count_nonfinite(be, losses, N, &bad), 0);
  cr_assert_eq(bad, 0, "losses %g %g %g %g", losses[0], losses[1], losses[2], losses[3]);
  cr_assert_eq(be->ops->count_nonfinite(be, probs, N * V, &bad), 0);
  cr_assert_eq(bad, 0);
  cr_assert_eq(be->ops->count_nonfinite(be, dl, N * V, &bad), 0);
  cr_assert_eq(bad, 0);
  cr_assert_eq(losses[0], 0.0f);
  cr_assert_float_eq(losses[1], 2e30f, 1e24f); /* log(1) - (-1e30 - 1e30) */
  /* sum_j e^-j over 256 terms: -log(1 - 1/e) to float precision. */
  cr_assert_float_eq(losses[2], -log1p(-exp(-1.0)), 1e-5);
  cr_assert_float_eq(losses[3], log(256.0), 1e-5);
  for (int n = 0; n < N; n++) {
    double sum = 0;
    for (int i = 0; i < V; i++) sum += probs[n * V + i];
    cr_assert_float_eq(sum, 1.0, 1e-5, "row %d sums to %.9g", n, sum);
  }
  free(logits), free(probs), free(dl);
  bt_backend_destroy(be);
}

/* ---- AdamW ---- */

Test(kernels, adamw_matches_double_reference_over_steps) {
  rng_state = 10;
  bt_backend_t *be = cpu();
  enum { N = 29, STEPS = 5 };
  float *p = frand(N), *m = fzeros(N), *v = fzeros(N);
  double *dp = to_double(p, N), *dm = dzeros(N), *dv = dzeros(N);
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  for (int t = 1; t <= STEPS; t++) {
    float *g = frand(N);
    float bc1 = (float)(1 - pow(b1, t)), bc2 = (float)(1 - pow(b2, t));
    cr_assert_eq(be->ops->adamw_update(be, p, m, v, g, N, lr, b1, b2, eps, wd, bc1, bc2), 0);
    for (int i = 0; i < N; i++) {
      dm[i] = b1 * dm[i] + (1 - (double)b1) * g[i];
      dv[i] = b2 * dv[i] + (1 - (double)b2) * g[i] * g[i];
      double mh = dm[i] / bc1, vh = dv[i] / bc2;
      dp[i] -= lr * (mh / (sqrt(vh) + eps) + wd * dp[i]);
    }
    free(g);
  }
  check_close("adamw params", p, dp, N, 1e-6, 1e-5);
  check_close("adamw m", m, dm, N, 1e-7, 1e-5);
  check_close("adamw v", v, dv, N, 1e-8, 1e-5);
  free(p), free(m), free(v), free(dp), free(dm), free(dv);
  bt_backend_destroy(be);
}

/* ---- count_nonfinite ---- */

Test(kernels, count_nonfinite_counts_nan_and_inf) {
  bt_backend_t *be = cpu();
  float x[9] = {0, 1, -2, NAN, INFINITY, -INFINITY, 3e38f, -NAN, 1e-45f};
  size_t c = 99;
  cr_assert_eq(be->ops->count_nonfinite(be, x, 9, &c), 0);
  cr_assert_eq(c, 4);
  cr_assert_eq(be->ops->count_nonfinite(be, x, 3, &c), 0);
  cr_assert_eq(c, 0);
  bt_backend_destroy(be);
}

/* ---- "+=" semantics of the weight-gradient (W) ops ---- */

/* For each W op: from zero, two calls give exactly twice one call, and a
 * call onto a gradient g0 gives exactly g0 + (one call from zero). Large N
 * so that OpenBLAS splits the row dimension into blocks. */
Test(kernels, weight_gradients_accumulate_exactly) {
  rng_state = 11;
  bt_backend_t *be = cpu();
  enum { N = 1031, C = 13, OC = 5, K = 2 };
  float *inp = frand((size_t)N * C), *dout = frand((size_t)N * OC), *dln = frand((size_t)N * C);
  float *w1 = fzeros(OC * C), *b1 = fzeros(OC), *w2 = fzeros(OC * C), *b2 = fzeros(OC);
  float *g0 = frand(OC * C), *g0b = frand(OC);
  float *w3 = malloc(OC * C * sizeof *w3), *b3 = malloc(OC * sizeof *b3);
  memcpy(w3, g0, OC * C * sizeof *w3), memcpy(b3, g0b, OC * sizeof *b3);
  cr_assert_eq(be->ops->matmul_backward_weight(be, w1, b1, dout, inp, N, C, OC), 0);
  cr_assert_eq(be->ops->matmul_backward_weight(be, w2, b2, dout, inp, N, C, OC), 0);
  cr_assert_eq(be->ops->matmul_backward_weight(be, w2, b2, dout, inp, N, C, OC), 0);
  cr_assert_eq(be->ops->matmul_backward_weight(be, w3, b3, dout, inp, N, C, OC), 0);
  for (int i = 0; i < OC * C; i++) {
    cr_assert_eq(w2[i], 2 * w1[i], "dweight[%d] %.9g != 2 * %.9g", i, w2[i], w1[i]);
    cr_assert_eq(w3[i], g0[i] + w1[i], "dweight[%d] from g0", i);
  }
  for (int i = 0; i < OC; i++) {
    cr_assert_eq(b2[i], 2 * b1[i]);
    cr_assert_eq(b3[i], g0b[i] + b1[i]);
  }

  float *mean = fzeros(N), *rstd = fzeros(N), *lnout = fzeros((size_t)N * C);
  float *lw = frand(C), *lb = frand(C);
  float lw1[C] = {0}, lb1[C] = {0}, lw2[C] = {0}, lb2[C] = {0};
  cr_assert_eq(be->ops->layernorm_forward(be, lnout, mean, rstd, inp, lw, lb, N, C), 0);
  cr_assert_eq(be->ops->layernorm_backward_weight(be, lw1, lb1, dln, inp, mean, rstd, N, C), 0);
  cr_assert_eq(be->ops->layernorm_backward_weight(be, lw2, lb2, dln, inp, mean, rstd, N, C), 0);
  cr_assert_eq(be->ops->layernorm_backward_weight(be, lw2, lb2, dln, inp, mean, rstd, N, C), 0);
  for (int i = 0; i < C; i++) {
    cr_assert_eq(lw2[i], 2 * lw1[i], "ln dweight[%d]", i);
    cr_assert_eq(lb2[i], 2 * lb1[i], "ln dbias[%d]", i);
  }

  size_t nt = (size_t)K * 256 * C;
  uint8_t *ctx = malloc(N + K);
  repeated_bytes(ctx, N + K);
  float *e1 = fzeros(nt), *e2 = fzeros(nt);
  cr_assert_eq(be->ops->embed_backward_weight(be, e1, dln, ctx, N, K, C), 0);
  cr_assert_eq(be->ops->embed_backward_weight(be, e2, dln, ctx, N, K, C), 0);
  cr_assert_eq(be->ops->embed_backward_weight(be, e2, dln, ctx, N, K, C), 0);
  for (size_t i = 0; i < nt; i++) cr_assert_eq(e2[i], 2 * e1[i], "dtables[%zu]", i);

  free(inp), free(dout), free(dln), free(w1), free(b1), free(w2), free(b2), free(g0), free(g0b);
  free(w3), free(b3), free(mean), free(rstd), free(lnout), free(lw), free(lb), free(ctx), free(e1);
  free(e2);
  bt_backend_destroy(be);
}

/* At the model's sizes (T = 128 and 256 rows, widths 128 and 512) the
 * weight gradient is one sgemm accumulating into dweight: still exactly
 * g0 + (one call from zero), and twice one call from zero. */
Test(kernels, direct_weight_gradient_is_grad_plus_sum_at_model_sizes) {
  rng_state = 12;
  bt_backend_t *be = cpu();
  const int shapes[][3] = {{128, 128, 512}, {128, 512, 128}, {256, 512, 2048}, {256, 128, 256}};
  for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
    int N = shapes[k][0], C = shapes[k][1], OC = shapes[k][2];
    size_t nw = (size_t)OC * C;
    float *inp = frand((size_t)N * C), *dout = frand((size_t)N * OC);
    float *w1 = fzeros(nw), *w2 = fzeros(nw), *g0 = frand(nw), *w3 = malloc(nw * sizeof *w3);
    float *b1 = fzeros(OC), *b2 = fzeros(OC);
    cr_assert(w3);
    memcpy(w3, g0, nw * sizeof *w3);
    cr_assert_eq(be->ops->matmul_backward_weight(be, w1, b1, dout, inp, N, C, OC), 0);
    cr_assert_eq(be->ops->matmul_backward_weight(be, w2, b2, dout, inp, N, C, OC), 0);
    cr_assert_eq(be->ops->matmul_backward_weight(be, w2, b2, dout, inp, N, C, OC), 0);
    cr_assert_eq(be->ops->matmul_backward_weight(be, w3, NULL, dout, inp, N, C, OC), 0);
    for (size_t i = 0; i < nw; i++) {
      cr_assert_eq(w2[i], 2 * w1[i], "N=%d C=%d OC=%d dweight[%zu] %.9g != 2 * %.9g", N, C, OC,
                   i, w2[i], w1[i]);
      cr_assert_eq(w3[i], g0[i] + w1[i], "N=%d C=%d OC=%d dweight[%zu] %.9g != %.9g + %.9g", N,
                   C, OC, i, w3[i], g0[i], w1[i]);
    }
    for (int i = 0; i < OC; i++) cr_assert_eq(b2[i], 2 * b1[i]);
    free(inp), free(dout), free(w1), free(w2), free(g0), free(w3), free(b1), free(b2);
  }
  bt_backend_destroy(be);
}

/* ---- a block's backward: I then W, per layer or deferred ---- */

/* The model's block, x + W2 gelu(W1 ln(x) + b1) + b2, at odd sizes. */
enum { BN = 7, BD = 5, BH = 13 };

typedef struct {
  float *x, *lw, *lb, *w1, *b1, *w2, *b2;             /* inputs and parameters */
  float *ln, *mean, *rstd, *h, *a, *y, *out;          /* activations */
  float *dx, *dlw, *dlb, *dw1, *db1, *dw2, *db2;      /* gradients */
  float *dy, *da, *dh, *dln;                          /* intermediate gradients */
} block_t;

static float *dup(const float *x, size_t n) {
  float *p = malloc(n * sizeof *p);
  memcpy(p, x, n * sizeof *p);
  return p;
}

static void block_init(block_t *b, const block_t *like) {
  if (like) {
    b->x = dup(like->x, BN * BD), b->lw = dup(like->lw, BD), b->lb = dup(like->lb, BD);
    b->w1 = dup(like->w1, BH * BD), b->b1 = dup(like->b1, BH);
    b->w2 = dup(like->w2, BD * BH), b->b2 = dup(like->b2, BD);
  } else {
    b->x = frand(BN * BD), b->lw = frand(BD), b->lb = frand(BD);
    b->w1 = frand(BH * BD), b->b1 = frand(BH), b->w2 = frand(BD * BH), b->b2 = frand(BD);
  }
  b->ln = fzeros(BN * BD), b->mean = fzeros(BN), b->rstd = fzeros(BN);
  b->h = fzeros(BN * BH), b->a = fzeros(BN * BH), b->y = fzeros(BN * BD), b->out = fzeros(BN * BD);
  b->dx = fzeros(BN * BD), b->dlw = fzeros(BD), b->dlb = fzeros(BD);
  b->dw1 = fzeros(BH * BD), b->db1 = fzeros(BH), b->dw2 = fzeros(BD * BH), b->db2 = fzeros(BD);
  b->dy = fzeros(BN * BD), b->da = fzeros(BN * BH), b->dh = fzeros(BN * BH);
  b->dln = fzeros(BN * BD);
}

static void block_free(block_t *b) {
  float **all[] = {&b->x,  &b->lw,  &b->lb,  &b->w1,  &b->b1,  &b->w2,  &b->b2, &b->ln, &b->mean,
                   &b->rstd, &b->h, &b->a,   &b->y,   &b->out, &b->dx,  &b->dlw, &b->dlb,
                   &b->dw1, &b->db1, &b->dw2, &b->db2, &b->dy, &b->da, &b->dh, &b->dln};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(*all[i]);
}

static void block_forward(bt_backend_t *be, block_t *b) {
  const bt_backend_ops_t *o = be->ops;
  cr_assert_eq(o->layernorm_forward(be, b->ln, b->mean, b->rstd, b->x, b->lw, b->lb, BN, BD), 0);
  cr_assert_eq(o->matmul_forward(be, b->h, b->ln, b->w1, b->b1, BN, BD, BH), 0);
  cr_assert_eq(o->gelu_forward(be, b->a, b->h, BN * BH), 0);
  cr_assert_eq(o->matmul_forward(be, b->y, b->a, b->w2, b->b2, BN, BH, BD), 0);
  cr_assert_eq(o->residual_forward(be, b->out, b->x, b->y, BN * BD), 0);
}

/* The I half: dx from dout, stashing what the W half needs (da is kept
 * separately from dh since gelu_backward may overwrite in place). */
static void block_backward_input(bt_backend_t *be, block_t *b, const float *dout) {
  const bt_backend_ops_t *o = be->ops;
  memcpy(b->dy, dout, BN * BD * sizeof(float));
  cr_assert_eq(o->matmul_backward_input(be, b->da, b->dy, b->w2, BN, BH, BD), 0);
  cr_assert_eq(o->gelu_backward(be, b->dh, b->h, b->da, BN * BH), 0);
  cr_assert_eq(o->matmul_backward_input(be, b->dln, b->dh, b->w1, BN, BD, BH), 0);
  cr_assert_eq(o->layernorm_backward_input(be, b->dx, b->dln, b->x, b->lw, b->mean, b->rstd, BN,
                                           BD), 0);
  cr_assert_eq(o->accumulate(be, b->dx, dout, BN * BD), 0); /* the residual path */
}

static void block_backward_weight(bt_backend_t *be, block_t *b) {
  const bt_backend_ops_t *o = be->ops;
  cr_assert_eq(o->matmul_backward_weight(be, b->dw2, b->db2, b->dy, b->a, BN, BH, BD), 0);
  cr_assert_eq(o->matmul_backward_weight(be, b->dw1, b->db1, b->dh, b->ln, BN, BD, BH), 0);
  cr_assert_eq(o->layernorm_backward_weight(be, b->dlw, b->dlb, b->dln, b->x, b->mean, b->rstd,
                                            BN, BD), 0);
}

typedef struct {
  double *x, *lw, *lb, *w1, *b1, *w2, *b2, *r;
} block_st;

static double block_loss(void *p) {
  block_st *s = p;
  double ln[BN * BD], h[BN * BH], y[BN * BD], l = 0;
  layernorm_ref(ln, NULL, NULL, s->x, s->lw, s->lb, BN, BD);
  matmul_ref(h, ln, s->w1, s->b1, BN, BD, BH);
  for (int i = 0; i < BN * BH; i++) h[i] = gelu_ref(h[i]);
  matmul_ref(y, h, s->w2, s->b2, BN, BH, BD);
  for (int i = 0; i < BN * BD; i++) l += s->r[i] * (s->x[i] + y[i]);
  return l;
}

/* Two micro-batches through one block: B as I then W per micro-batch, and
 * ZB-style with both W halves deferred after both I halves, give the same
 * bits; and the gradients match finite differences of the whole block. */
Test(kernels, block_backward_split_into_input_and_weight_halves) {
  rng_state = 12;
  bt_backend_t *be = cpu();
  block_t m0a, m1a, m0b, m1b;
  block_init(&m0a, NULL);
  block_init(&m1a, NULL);
  block_init(&m0b, &m0a);
  block_init(&m1b, &m1a);
  float *dout0 = frand(BN * BD), *dout1 = frand(BN * BD);
  /* One set of parameter gradients shared by both micro-batches: m1's
   * gradient pointers alias m0's, as in a real stage. */
  block_t *pairs[2][2] = {{&m0a, &m1a}, {&m0b, &m1b}};
  for (int k = 0; k < 2; k++) {
    block_t *p = pairs[k][0], *q = pairs[k][1];
    memcpy(q->lw, p->lw, BD * sizeof(float));
    memcpy(q->lb, p->lb, BD * sizeof(float));
    memcpy(q->w1, p->w1, BH * BD * sizeof(float));
    memcpy(q->b1, p->b1, BH * sizeof(float));
    memcpy(q->w2, p->w2, BD * BH * sizeof(float));
    memcpy(q->b2, p->b2, BD * sizeof(float));
    free(q->dlw), free(q->dlb), free(q->dw1), free(q->db1), free(q->dw2), free(q->db2);
    q->dlw = p->dlw, q->dlb = p->dlb, q->dw1 = p->dw1, q->db1 = p->db1, q->dw2 = p->dw2,
    q->db2 = p->db2;
  }
  /* (a) B = I then W, micro-batch by micro-batch. */
  block_forward(be, &m0a);
  block_forward(be, &m1a);
  block_backward_input(be, &m0a, dout0);
  block_backward_weight(be, &m0a);
  block_backward_input(be, &m1a, dout1);
  block_backward_weight(be, &m1a);
  /* (b) I, I, then W, W (micro-batch order kept). */
  block_forward(be, &m0b);
  block_forward(be, &m1b);
  block_backward_input(be, &m0b, dout0);
  block_backward_input(be, &m1b, dout1);
  block_backward_weight(be, &m0b);
  block_backward_weight(be, &m1b);
  check_bits("dx mb0", m0a.dx, m0b.dx, BN * BD);
  check_bits("dx mb1", m1a.dx, m1b.dx, BN * BD);
  check_bits("dw1", m0a.dw1, m0b.dw1, BH * BD);
  check_bits("db1", m0a.db1, m0b.db1, BH);
  check_bits("dw2", m0a.dw2, m0b.dw2, BD * BH);
  check_bits("db2", m0a.db2, m0b.db2, BD);
  check_bits("dlw", m0a.dlw, m0b.dlw, BD);
  check_bits("dlb", m0a.dlb, m0b.dlb, BD);

  /* Against calculus: the summed loss of both micro-batches. */
  block_st s0 = {to_double(m0a.x, BN * BD), to_double(m0a.lw, BD), to_double(m0a.lb, BD),
                 to_double(m0a.w1, BH * BD), to_double(m0a.b1, BH), to_double(m0a.w2, BD * BH),
                 to_double(m0a.b2, BD), to_double(dout0, BN * BD)};
  block_st s1 = s0;
  s1.x = to_double(m1a.x, BN * BD);
  s1.r = to_double(dout1, BN * BD);
  double gx[BN * BD];
  fd_grad(block_loss, &s0, s0.x, BN * BD, gx);
  check_close("block dx", m0a.dx, gx, BN * BD, 1e-4, 1e-4);
  double g0[BH * BD], g1[BH * BD];
  fd_grad(block_loss, &s0, s0.w1, BH * BD, g0);
  s1.w1 = s0.w1;
  fd_grad(block_loss, &s1, s1.w1, BH * BD, g1);
  for (int i = 0; i < BH * BD; i++) g0[i] += g1[i];
  check_close("block dw1 (two micro-batches)", m0a.dw1, g0, BH * BD, 1e-4, 1e-4);
  double gl0[BD], gl1[BD];
  fd_grad(block_loss, &s0, s0.lw, BD, gl0);
  fd_grad(block_loss, &s1, s1.lw, BD, gl1);
  for (int i = 0; i < BD; i++) gl0[i] += gl1[i];
  check_close("block dlw (two micro-batches)", m0a.dlw, gl0, BD, 1e-4, 1e-4);

  free(s0.x), free(s0.lw), free(s0.lb), free(s0.w1), free(s0.b1), free(s0.w2), free(s0.b2);
  free(s0.r), free(s1.x), free(s1.r);
  for (int k = 0; k < 2; k++) {
    block_t *q = pairs[k][1];
    q->dlw = q->dlb = q->dw1 = q->db1 = q->dw2 = q->db2 = NULL;
  }
  block_free(&m0a), block_free(&m1a), block_free(&m0b), block_free(&m1b);
  free(dout0), free(dout1);
  bt_backend_destroy(be);
}

/* ---- determinism ---- */

/* Every op twice on fresh outputs, with another op's work in between, at a
 * size where OpenBLAS blocks: the bits must agree. */
Test(kernels, same_inputs_give_same_bits) {
  rng_state = 13;
  enum { N = 300, C = 64, OC = 256, K = 3, V = 256 };
  float *inp = frand((size_t)N * C), *w = frand((size_t)OC * C), *bias = frand(OC);
  float *dout = frand((size_t)N * OC), *tables = frand((size_t)K * 256 * C);
  uint8_t *ctx = malloc(N + K), *tg = malloc(N);
  for (int i = 0; i < N + K; i++) ctx[i] = (uint8_t)rng_next();
  for (int i = 0; i < N; i++) tg[i] = (uint8_t)rng_next();
  float *res[2][10];
  for (int run = 0; run < 2; run++) {
    bt_backend_t *be = cpu();
    const bt_backend_ops_t *o = be->ops;
    float **r = res[run];
    r[0] = fzeros((size_t)N * OC), r[1] = fzeros((size_t)N * C), r[2] = fzeros((size_t)OC * C);
    r[3] = fzeros(OC), r[4] = fzeros((size_t)N * C), r[5] = fzeros((size_t)K * 256 * C);
    r[6] = fzeros((size_t)N * OC), r[7] = fzeros(N), r[8] = fzeros((size_t)N * OC);
    r[9] = fzeros((size_t)N * C);
    float mean[N], rstd[N];
    cr_assert_eq(o->matmul_forward(be, r[0], inp, w, bias, N, C, OC), 0);
    cr_assert_eq(o->matmul_backward_input(be, r[1], dout, w, N, C, OC), 0);
    cr_assert_eq(o->matmul_backward_weight(be, r[2], r[3], dout, inp, N, C, OC), 0);
    cr_assert_eq(o->layernorm_forward(be, r[4], mean, rstd, inp, bias, bias + C, N, C), 0);
    cr_assert_eq(o->layernorm_backward_input(be, r[9], r[1], inp, bias, mean, rstd, N, C), 0);
    cr_assert_eq(o->embed_backward_weight(be, r[5], r[4], ctx, N, K, C), 0);
    cr_assert_eq(o->gelu_forward(be, r[6], r[0], (size_t)N * OC), 0);
    cr_assert_eq(o->crossentropy_forward(be, r[7], r[8], r[0], tg, N, V), 0);
    bt_backend_destroy(be);
  }
  size_t sizes[10] = {(size_t)N * OC, (size_t)N * C, (size_t)OC * C, OC, (size_t)N * C,
                      (size_t)K * 256 * C, (size_t)N * OC, N, (size_t)N * OC, (size_t)N * C};
  for (int i = 0; i < 10; i++) {
    char what[32];
    snprintf(what, sizeof what, "result %d", i);
    check_bits(what, res[0][i], res[1][i], sizes[i]);
    free(res[0][i]), free(res[1][i]);
  }
  free(inp), free(w), free(bias), free(dout), free(tables), free(ctx), free(tg);
}

/* ---- backend selection ---- */

Test(kernels, unknown_backend_name_is_an_argument_error) {
  bt_backend_t *be = NULL;
  char why[128];
  cr_assert_eq(bt_backend_create("tpu", 0, &be, why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "tpu"), "why: %s", why);
}

Test(kernels, cpu_backend_memory_ops) {
  bt_backend_t *be = cpu();
  float *p = NULL, host[5] = {1, 2, 3, 4, 5}, back[5];
  cr_assert_eq(be->ops->alloc(be, (void **)&p, sizeof host), 0);
  for (int i = 0; i < 5; i++) cr_assert_eq(p[i], 0.0f, "alloc must zero");
  cr_assert_eq(be->ops->to_device(be, p, host, sizeof host), 0);
  cr_assert_eq(be->ops->to_host(be, back, p, sizeof back), 0);
  check_bits("round trip", back, host, 5);
  cr_assert_eq(be->ops->zero(be, p, sizeof host), 0);
  cr_assert_eq(be->ops->sync(be), 0);
  cr_assert_eq(p[4], 0.0f);
  be->ops->free(be, p);
  bt_backend_destroy(be);
}

Test(kernels, cpu_math_mode_is_fp32_only) {
  bt_backend_t *be = cpu();
  cr_assert_str_eq(be->ops->math_mode(be), "fp32");
  cr_assert_eq(be->ops->set_math(be, "fp32"), 0);
  cr_assert_eq(be->ops->set_math(be, "tf32"), BT_EUNSUPPORTED);
  cr_assert_eq(be->ops->set_math(be, "fp16"), BT_EARG);
  bt_backend_destroy(be);
}

/* Creating the backend pins OpenBLAS to one thread whatever was set before
 * (OPENBLAS_NUM_THREADS, or a library that called openblas_set_num_threads):
 * the split of a product between threads would change its bits. */
Test(kernels, cpu_backend_pins_openblas_to_one_thread) {
  openblas_set_num_threads(2);
  bt_backend_t *be = cpu();
  cr_assert_eq(openblas_get_num_threads(), 1, "OpenBLAS threads: %d", openblas_get_num_threads());
  bt_backend_destroy(be);
}

Test(kernels, empty_batches_are_no_ops) {
  bt_backend_t *be = cpu();
  float w[6] = {1, 2, 3, 4, 5, 6}, dw[6] = {0}, db[2] = {0}, x[1] = {0};
  cr_assert_eq(be->ops->matmul_forward(be, x, x, w, NULL, 0, 3, 2), 0);
  cr_assert_eq(be->ops->matmul_backward_weight(be, dw, db, x, x, 0, 3, 2), 0);
  cr_assert_eq(be->ops->layernorm_backward_weight(be, dw, db, x, x, x, x, 0, 2), 0);
  for (int i = 0; i < 6; i++) cr_assert_eq(dw[i], 0.0f);
  cr_assert_eq(db[0], 0.0f);
  cr_assert_eq(be->ops->layernorm_forward(be, x, x, x, x, w, w, 3, 0), BT_EARG);
  bt_backend_destroy(be);
}
