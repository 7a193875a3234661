/* gelu.h - exact GELU and its derivative for the CPU backend.
 *
 * gelu(x) = x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, and
 * gelu'(x) = Phi(x) + x phi(x), phi the standard normal density. Both are
 * computed in double from one polynomial for erfc (no libm call, so the
 * loop vectorises) and rounded to float once. Accuracy, measured over the
 * float range by tests/test_kernels.c against long double erfcl/expl: at
 * most BT_GELU_ULP_BOUND ulp for gelu, and for gelu' times dout; limits at
 * the ends: gelu(+Inf) = +Inf, gelu(-Inf) = -0, gelu'(+Inf) = 1,
 * gelu'(-Inf) = 0; NaN in, NaN out.
 *
 * The same bits on every CPU: the loops are cloned for AVX-512, AVX2 and
 * plain x86-64 (one binary for every node), and every path performs the
 * same IEEE double operations in the same order (no fused multiply-add:
 * -ffp-contract=off), so vector width changes nothing.
 */
#ifndef BT_KERNELS_CPU_GELU_H
#define BT_KERNELS_CPU_GELU_H
#include <stddef.h>

/* The bound the tests assert; the measured maximum is in the test's log. */
#define BT_GELU_ULP_BOUND 0.51

void bt_cpu_gelu_forward(float *out, const float *inp, size_t n); /* (n) each */
/* dinp = gelu'(inp) * dout; dinp may alias dout. */
void bt_cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

#endif
