/* gelu.c - see gelu.h. The constants come from gelu_coeffs.py (next to
 * this file), which derives them with mpmath and prints each fit's error.
 *
 * How: w = |x| / sqrt 2. erfc(w) = exp(-w^2) P(y) with y = (w - 4)/(w + 4)
 * and P a degree-18 polynomial for erfcx (relative error of the fit 2e-15
 * over w in [0, 10.5]); exp is a range reduction by ln 2 and a degree-11
 * polynomial, the power of two built from its bits. Then
 * Phi(x) = erfc(w)/2 for x < 0 and 1 - erfc(w)/2 otherwise, and
 * phi(x) = exp(-w^2) / sqrt(2 pi) reuses the same exponential. Beyond
 * w = 10.5 (|x| > 14.85) gelu rounds to -0 or x and gelu' to 0 or 1 in
 * float, so those are selected outright, which also gives the limits at
 * +-Inf instead of Inf * 0.
 *
 * Why double: every intermediate has about 1e-14 relative error (w^2 is
 * the worst: its rounding is multiplied by up to 110 in the exponent), ten
 * million times finer than float's half ulp, so the one final rounding
 * decides the result and the error stays within half an ulp but for
 * values a hair from a rounding boundary.
 */
#include "kernels/cpu/gelu.h"

#include <stdint.h>
#include <string.h>

#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

static const double erfcx_p[19] = {
    0x1.a2f75d03fed57p-26, 0x1.0da5311646d70p-25, -0x1.91e58cb6fa04cp-22,
    -0x1.cc69ff7c8842bp-22, 0x1.91aeefd781de5p-19, -0x1.f5c8866b90df8p-20,
    -0x1.7a85b0b9a063ep-16, 0x1.4b3b12e6fdd8dp-14, -0x1.6d1f7397abbecp-16,
    -0x1.a2f8bd3da6a94p-11, 0x1.0a17ed4042278p-8, -0x1.a4ded466d4f49p-7,
    0x1.0066e0fec6aa5p-5, -0x1.027d5744458fep-4, 0x1.be502c3678bf6p-4,
    -0x1.506666f69f79cp-3, 0x1.bff01a5f9044ep-3, -0x1.094922737430ap-2,
    0x1.18932bf08e157p-3,
};

static const double exp_p[12] = {
    0x1.af639fa6e1b0bp-26, 0x1.28b46faf8c24cp-22, 0x1.71ddf52ded199p-19,
    0x1.a01991399f987p-16, 0x1.a01a01b15de9dp-13, 0x1.6c16c18826db1p-10,
    0x1.111111110f1e5p-7, 0x1.555555554f000p-5, 0x1.555555555555ap-3,
    0x1.0000000000011p-1, 0x1.0000000000000p+0, 0x1.0000000000000p+0,
};

#define SQRT1_2 0x1.6a09e667f3bcdp-1
#define INV_SQRT_2PI 0x1.9884533d43651p-2
#define LN2_HI 0x1.62e42fee00000p-1
#define LN2_LO 0x1.a39ef35793c76p-33
#define LOG2E 0x1.71547652b82fep+0
#define SHIFTER 0x1.8p52 /* adding it rounds to an integer, kept in the low bits */
#define W_CUT 10.5

/* exp(a) for a in [-111, 0]: a = n ln2 + r, |r| <= ln2/2. */
static inline double exp_neg(double a) {
  double t = a * LOG2E + SHIFTER;
  double n = t - SHIFTER;
  double r = (a - n * LN2_HI) - n * LN2_LO;
  double p = exp_p[0];
  /* Written out: a loop here would keep the caller's loop from vectorising. */
#define H(i) p = p * r + exp_p[i]
  H(1); H(2); H(3); H(4); H(5); H(6); H(7); H(8); H(9); H(10); H(11);
#undef H
  uint64_t tb, sb;
  memcpy(&tb, &t, sizeof tb);
  /* The low bits of t hold n (two's complement); 2^n has exponent n + 1023. */
  sb = (tb - 0x4338000000000000ull + 1023u) << 52;
  double scale;
  memcpy(&scale, &sb, sizeof scale);
  return p * scale;
}

/* Phi(x), and exp(-x^2/2) in *e (x finite or not; see the file comment). */
static inline double phi_cdf(double x, double *e) {
  double w = __builtin_fabs(x) * SQRT1_2;
  double wc = w < W_CUT ? w : W_CUT; /* NaN takes W_CUT: the caller's x carries it */
  double y = (wc - 4.0) / (wc + 4.0);
  double p = erfcx_p[0];
#define H(i) p = p * y + erfcx_p[i]
  H(1); H(2); H(3); H(4); H(5); H(6); H(7); H(8); H(9); H(10);
  H(11); H(12); H(13); H(14); H(15); H(16); H(17); H(18);
#undef H
  double ex = exp_neg(-(wc * wc));
  double half_erfc = 0.5 * (ex * p);
  *e = ex;
  return x < 0 ? half_erfc : 1.0 - half_erfc;
}

CLONES void bt_cpu_gelu_forward(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    double x = inp[i], e;
    double g = x * phi_cdf(x, &e);
    /* Below -14.85 the true value is under float's smallest subnormal. */
    out[i] = (float)(x < -W_CUT / SQRT1_2 ? -0.0 : g);
  }
}

CLONES void bt_cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
  for (size_t i = 0; i < n; i++) {
    double x = inp[i], e;
    double cdf = phi_cdf(x, &e);
    double d = cdf + x * (e * INV_SQRT_2PI);
    /* Beyond the cut x phi(x) is below float's range; Inf * 0 must not
     * reach the result. */
    double a = __builtin_fabs(x);
    d = a > W_CUT / SQRT1_2 ? (x < 0 ? 0.0 : 1.0) : d;
    dinp[i] = (float)(d * (double)dout[i]);
  }
}
