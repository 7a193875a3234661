#!/usr/bin/env python3
"""gelu_coeffs.py - derives the constants of kernels/cpu/gelu.c.

Not part of the build: run it (Debian's /usr/bin/python3 with python3-mpmath)
to check or regenerate the table the C file carries. Two fits, both Chebyshev
interpolants from mpmath at 50 digits, printed as C hex-float literals:

- erfcx(w) = exp(w^2) erfc(w), w in [0, 10.5], as a degree-18 polynomial
  in y = (w - 4) / (w + 4) (a Moebius map after Weideman, "Computation of
  the complex error function", 1994, which lets one polynomial cover the
  whole range); erfc(w) = exp(-w^2) * P(y).
- exp(r), |r| <= ln2 / 2, degree 11.

It also prints each fit's own maximum relative error; the C test
(tests/test_kernels.c, gelu_*) measures what the float results achieve.
"""
import mpmath as mp

mp.mp.dps = 50
K = mp.mpf(4)
CUT = mp.mpf("10.5")


def erfcx(y):
    w = K * (1 + y) / (1 - y)
    return mp.erfc(w) * mp.exp(w * w)


def hexf(x):
    return float(x).hex()


def main():
    lo, hi = (0 - K) / (0 + K), (CUT - K) / (CUT + K)
    c, err = mp.chebyfit(erfcx, [lo, hi], 19, error=True)
    # erfcx is smallest (0.0535) at the top of the range: the relative error.
    print("/* erfcx(w) in y = (w - 4)/(w + 4), highest degree first; relative error %s */"
          % mp.nstr(err / (mp.erfc(CUT) * mp.exp(CUT * CUT)), 3))
    for x in c:
        print("    %s," % hexf(x))
    h = mp.log(2) / 2 * mp.mpf("1.001")
    c, err = mp.chebyfit(mp.exp, [-h, h], 12, error=True)
    print("/* exp(r), |r| <= ln2/2, highest degree first; fit error %s */" % mp.nstr(err, 3))
    for x in c:
        print("    %s," % hexf(x))
    ln2 = mp.log(2)
    # ln2_hi keeps 32 significant bits, so n * ln2_hi is exact for |n| < 2^20.
    hi_ = mp.floor(ln2 * 2**32) / 2**32
    print("LN2_HI %s LN2_LO %s LOG2E %s" % (hexf(hi_), hexf(ln2 - hi_), hexf(1 / ln2)))
    print("1/sqrt(2pi) %s  1/sqrt2 %s" % (hexf(1 / mp.sqrt(2 * mp.pi)), hexf(1 / mp.sqrt(2))))


if __name__ == "__main__":
    main()
