// exp and tanh for the host side of cell_math.cuh, float and double, written so that a compiler
// vectorizes a loop of them (no calls, no branches, no lookup tables): Cody-Waite reduction
// x = n ln2 + r, a polynomial (float) or Padé (double) approximation of e^r from Cephes, and 2^n
// built in the exponent bits.  Within 1-2 ulp of libm over the whole range; NaN propagates;
// arguments past the overflow / underflow thresholds saturate at the largest / smallest normal
// result, which leaves sigmoid and tanh exact at their limits (1, 0 and ±1).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "host_device.cuh"

namespace fastrnn {

// The power of two 2^n of a whole-numbered n within the normal range, from its exponent bits:
// adding 2^52 (2^23) puts n + bias in the low bits of the mantissa, where a shift moves it.
FASTRNN_HD double exp2_of_whole(double n) {
  const double shifted = n + (1023.0 + 4503599627370496.0);
  uint64_t bits;
  memcpy(&bits, &shifted, sizeof bits);
  bits <<= 52;
  double result;
  memcpy(&result, &bits, sizeof result);
  return result;
}

FASTRNN_HD float exp2_of_whole(float n) {
  const float shifted = n + (127.0f + 8388608.0f);
  uint32_t bits;
  memcpy(&bits, &shifted, sizeof bits);
  bits <<= 23;
  float result;
  memcpy(&result, &bits, sizeof result);
  return result;
}

FASTRNN_HD float host_exp(float x) {
  x = x > 88.0f ? 88.0f : x;    // keeps n + 127 within the normal exponents (NaN passes both)
  x = x < -87.0f ? -87.0f : x;
  // n = round(x / ln 2) by the 1.5·2^23 trick (exact for |x / ln 2| < 2^22).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return (p * r * r + r + 1.0f) * exp2_of_whole(n);
}

FASTRNN_HD double host_exp(double x) {
  x = x > 709.0 ? 709.0 : x;
  x = x < -708.0 ? -708.0 : x;
  const double n = (x * 1.4426950408889634073599 + 6755399441055744.0) - 6755399441055744.0;
  const double r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
  const double rr = r * r;
  const double p =
      r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
           9.99999999999999999910e-1);
  const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                    2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  return (1.0 + 2.0 * (p / (q - p))) * exp2_of_whole(n);
}

// tanh: an odd polynomial (rational for double) below 0.625, where 1 - e^(-2|x|) would cancel;
// (1 - e^(-2|x|)) / (1 + e^(-2|x|)) with x's sign above.
FASTRNN_HD float host_tanh(float x) {
  const float a = fabsf(x);
  const float z = x * x;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
        1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  const float e = host_exp(-2.0f * a);
  const float large = copysignf((1.0f - e) / (1.0f + e), x);
  return a < 0.625f ? small : large;
}

FASTRNN_HD double host_tanh(double x) {
  const double a = fabs(x);
  const double z = x * x;
  const double p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z -
                   1.61468768441708447952e3;
  const double q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z +
                   4.84406305325125486048e3;
  const double small = x + x * z * (p / q);
  const double e = host_exp(-2.0 * a);
  const double large = copysign((1.0 - e) / (1.0 + e), x);
  return a < 0.625 ? small : large;
}

}  // namespace fastrnn
