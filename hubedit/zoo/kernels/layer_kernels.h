// Per-model layer kernels shared by group_layer.cpp (one hidden layer of a whole group, the torch custom
// op) and group_step.cpp (a whole training step of a group): see group_layer.cpp for the conventions.
#pragma once
#include <math.h>
#include <stdint.h>

#include <vector>

namespace {

// the per-element helpers are forced inline: in a large translation unit (group_step.cpp) gcc's inliner
// budget otherwise leaves some as calls, and the loops that call them stop vectorising
#define HUBEDIT_INLINE inline __attribute__((always_inline))

constexpr float kSlope = 0.01f;
constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr uint32_t kM31 = 0x7FFFFFFFu;
constexpr int64_t kPosStride = 1024;
// activations whose derivative the forward pass stores (the others': recomputed in the backward pass)
constexpr bool stores_slope(int act) { return act >= 2; }

// The trainer's _hash31 (int64 in torch) in 32-bit arithmetic: its operands are below 2^31 and every
// step keeps only the low 31 bits of a product, which the low 32 bits determine -- the same values, with
// the vector unit's fast 32-bit multiply.
HUBEDIT_INLINE uint32_t hash31(uint32_t x) {
  x ^= x >> 16;
  x = (x * 0x7FEB352Du) & kM31;
  x ^= x >> 15;
  x = (x * 0x846CA68Bu) & kM31;
  return x ^ (x >> 16);
}

// Per-model parameters of one layer's block.
struct Block {
  const float* bias;   // (W): the layer's bias, added to z here (a batched GEMM with a broadcast bias
                       // first copies the bias into its whole output)
  const float* gamma;  // (W) or null (no norm)
  const float* beta;
  uint32_t key, thr;  // dropout draw
  float scale;
  int64_t B, W, n;  // rows, padded width, real width
  float eps;
};

template <bool KEEP>
HUBEDIT_INLINE float keep_of(uint32_t row_key, int64_t w, uint32_t thr, float scale) {
  if constexpr (KEEP) return hash31((row_key + (uint32_t)w) & kM31) >= thr ? scale : 0.f;
  return 1.f;
}

// sigmoid without an overflowing exp: -ffast-math assumes finite values, and 1 / (1 + expf(-y)) returns
// NaN instead of 0 once expf(-y) overflows (y < -88)
HUBEDIT_INLINE float sigmoid(float y) {
  const float e = expf(-fabsf(y));
  const float r = 1.f / (1.f + e);
  return y >= 0.f ? r : e * r;
}

template <int ACT>
HUBEDIT_INLINE float act_value(float y) {
  if constexpr (ACT == 0) return y > 0.f ? y : 0.f;
  if constexpr (ACT == 1) return y > 0.f ? y : y * kSlope;
  if constexpr (ACT == 2) return y * (0.5f * (1.f + erff(y * kInvSqrt2)));
  if constexpr (ACT == 3) return y * sigmoid(y);
  if constexpr (ACT == 4) return tanhf(y);
  return sigmoid(y);
}

template <int ACT>
HUBEDIT_INLINE float act_slope(float y) {
  if constexpr (ACT == 0) return y > 0.f ? 1.f : 0.f;
  if constexpr (ACT == 1) return y > 0.f ? 1.f : kSlope;
  if constexpr (ACT == 2) return 0.5f * (1.f + erff(y * kInvSqrt2)) + y * expf(-0.5f * y * y) * kInvSqrt2Pi;
  if constexpr (ACT == 3) {
    const float s = sigmoid(y);
    return s * (1.f + y * (1.f - s));
  }
  if constexpr (ACT == 4) {
    const float t = tanhf(y);
    return 1.f - t * t;
  }
  const float s = sigmoid(y);
  return s * (1.f - s);
}

// y of unit w in a row: per-unit statistics (BatchNorm), per-row ones (LayerNorm) or none. Loop bodies
// take every per-block value as a local (restrict) pointer or scalar: read through the Block struct,
// gcc cannot vectorise the loops that also draw dropout (measured 5-30x slower).
template <int NORM>
HUBEDIT_INLINE float normed(const float* __restrict gamma, const float* __restrict beta, float z, int64_t w,
                    const float* __restrict mean, const float* __restrict rstd, float m, float r) {
  if constexpr (NORM == 0) return z;
  if constexpr (NORM == 1) return (z - mean[w]) * rstd[w] * gamma[w] + beta[w];
  return (z - m) * r * gamma[w] + beta[w];
}

// Statistics of a block: BatchNorm mean / biased variance per unit (and rstd), LayerNorm mean / rstd per row.
template <int NORM>
void block_stats(const Block& p, const float* z, float* bn_mean, float* bn_var, float* rstd, float* ln_mean,
                 float* ln_rstd) {
  const int64_t B = p.B, W = p.W, n = p.n;
  const float* __restrict bias = p.bias;
  if constexpr (NORM == 1) {
    for (int64_t w = 0; w < W; ++w) bn_mean[w] = 0.f, bn_var[w] = 0.f;
    for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) bn_mean[w] += z[b * W + w] + bias[w];
    }
    for (int64_t w = 0; w < W; ++w) bn_mean[w] /= (float)B;
    for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        float c = z[b * W + w] + bias[w] - bn_mean[w];
        bn_var[w] += c * c;
      }
    }
    for (int64_t w = 0; w < W; ++w) {
      bn_var[w] /= (float)B;
      rstd[w] = 1.f / sqrtf(bn_var[w] + p.eps);
    }
  } else if constexpr (NORM == 2) {
    for (int64_t b = 0; b < B; ++b) {
      const float* zr = z + b * W;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t w = 0; w < n; ++w) s += zr[w] + bias[w];
      const float m = s / (float)n;
      float v = 0.f;
#pragma omp simd reduction(+ : v)
      for (int64_t w = 0; w < n; ++w) v += (zr[w] + bias[w] - m) * (zr[w] + bias[w] - m);
      ln_mean[b] = m;
      ln_rstd[b] = 1.f / sqrtf(v / (float)n + p.eps);
    }
  }
}

template <int NORM, int ACT, bool KEEP>
void block_forward(const Block& p, const float* z, float* h, float* d, float* bn_mean, float* bn_var, float* ln_mean,
                   float* ln_rstd) {
  const int64_t B = p.B, W = p.W;
  float rstd[1024];  // W <= 1024 (checked by the caller)
  block_stats<NORM>(p, z, bn_mean, bn_var, rstd, ln_mean, ln_rstd);
  const float *__restrict gamma = p.gamma, *__restrict beta = p.beta, *__restrict mean = bn_mean;
  const float* __restrict bias = p.bias;
  const uint32_t thr = p.thr;
  const float scale = p.scale;
  for (int64_t b = 0; b < B; ++b) {
    const float* __restrict zr = z + b * W;
    float* __restrict hr = h + b * W;
    float* __restrict dr = stores_slope(ACT) ? d + b * W : nullptr;
    const float m = NORM == 2 ? ln_mean[b] : 0.f, r = NORM == 2 ? ln_rstd[b] : 0.f;
    const uint32_t row_key = p.key + (uint32_t)(b * kPosStride);
#pragma omp simd
    for (int64_t w = 0; w < W; ++w) {
      const float y = normed<NORM>(gamma, beta, zr[w] + bias[w], w, mean, rstd, m, r);
      const float k = keep_of<KEEP>(row_key, w, thr, scale);
      hr[w] = act_value<ACT>(y) * k;
      if constexpr (stores_slope(ACT)) dr[w] = act_slope<ACT>(y) * k;
    }
  }
}

// gy = dL/dy of one row: the output gradient times the activation's derivative and the dropout factor,
// recomputed from z for relu / leaky relu, read from d for the others.
template <int NORM, int ACT, bool KEEP>
HUBEDIT_INLINE void row_gy(const Block& p, int64_t b, const float* __restrict g, const float* __restrict zr,
                   const float* __restrict dr, const float* __restrict mean, const float* __restrict rstd, float m,
                   float r, float* __restrict gy) {
  const float *__restrict gamma = p.gamma, *__restrict beta = p.beta, *__restrict bias = p.bias;
  const uint32_t row_key = p.key + (uint32_t)(b * kPosStride), thr = p.thr;
  const float scale = p.scale;
  const int64_t W = p.W;
#pragma omp simd
  for (int64_t w = 0; w < W; ++w) {
    if constexpr (stores_slope(ACT)) {
      gy[w] = g[w] * dr[w];
    } else {
      const float y = normed<NORM>(gamma, beta, zr[w] + bias[w], w, mean, rstd, m, r);
      gy[w] = g[w] * act_slope<ACT>(y) * keep_of<KEEP>(row_key, w, thr, scale);
    }
  }
}

template <int NORM, int ACT, bool KEEP>
void block_backward(const Block& p, const float* gh, int64_t sb, const float* z, const float* d, const float* bn_mean,
                    const float* bn_var, const float* ln_mean, const float* ln_rstd, float* __restrict gz,
                    float* __restrict gbias, float* __restrict ggamma, float* __restrict gbeta, float* scratch) {
  const int64_t B = p.B, W = p.W, n = p.n;
  const float *__restrict gamma = p.gamma, *__restrict bias = p.bias, *__restrict mean = bn_mean;
  for (int64_t w = 0; w < W; ++w) gbias[w] = 0.f;
  if constexpr (NORM == 0) {  // gz = gy
    for (int64_t b = 0; b < B; ++b) {
      float* __restrict o = gz + b * W;
      row_gy<0, ACT, KEEP>(p, b, gh + b * sb, z + b * W, d ? d + b * W : nullptr, nullptr, nullptr, 0.f, 0.f, o);
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) gbias[w] += o[w];
    }
    return;
  }
  for (int64_t w = 0; w < W; ++w) ggamma[w] = 0.f, gbeta[w] = 0.f;
  if constexpr (NORM == 1) {
    float rstd[1024], c1[1024], c2[1024];
    for (int64_t w = 0; w < W; ++w) rstd[w] = 1.f / sqrtf(bn_var[w] + p.eps);
    for (int64_t b = 0; b < B; ++b) {  // gy of the block (kept in scratch) and its sums over the batch
      float* __restrict gy = scratch + b * W;
      const float* __restrict zr = z + b * W;
      row_gy<1, ACT, KEEP>(p, b, gh + b * sb, zr, d ? d + b * W : nullptr, mean, rstd, 0.f, 0.f, gy);
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        gbeta[w] += gy[w];
        ggamma[w] += gy[w] * (zr[w] + bias[w] - mean[w]) * rstd[w];
      }
    }
    for (int64_t w = 0; w < W; ++w) c1[w] = gbeta[w] / (float)B, c2[w] = ggamma[w] / (float)B;
    for (int64_t b = 0; b < B; ++b) {  // gz = rstd gamma (gy - mean gy - xhat mean(gy xhat))
      const float *__restrict gy = scratch + b * W, *__restrict zr = z + b * W;
      float* __restrict o = gz + b * W;
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        const float xhat = (zr[w] + bias[w] - mean[w]) * rstd[w];
        o[w] = rstd[w] * gamma[w] * (gy[w] - c1[w] - xhat * c2[w]);
        gbias[w] += o[w];
      }
    }
  } else {  // per row over the real width n: gz = rstd (dx - mean dx - xhat mean(dx xhat)), dx = gy gamma
    float* __restrict gy = scratch;
    for (int64_t b = 0; b < B; ++b) {
      const float* __restrict zr = z + b * W;
      float* __restrict o = gz + b * W;
      const float m = ln_mean[b], r = ln_rstd[b];
      row_gy<2, ACT, KEEP>(p, b, gh + b * sb, zr, d ? d + b * W : nullptr, nullptr, nullptr, m, r, gy);
      float s1 = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t w = 0; w < n; ++w) {
        const float xhat = (zr[w] + bias[w] - m) * r;
        const float dx = gy[w] * gamma[w];
        s1 += dx;
        s2 += dx * xhat;
        gbeta[w] += gy[w];
        ggamma[w] += gy[w] * xhat;
      }
      s1 /= (float)n;
      s2 /= (float)n;
#pragma omp simd
      for (int64_t w = 0; w < n; ++w) {
        const float xhat = (zr[w] + bias[w] - m) * r;
        o[w] = r * (gy[w] * gamma[w] - s1 - xhat * s2);
        gbias[w] += o[w];
      }
      for (int64_t w = n; w < W; ++w) o[w] = 0.f;
    }
  }
}

// The kernel instance of a model's (norm, activation, dropout).
template <typename F>
void dispatch(int norm, int act, bool keep, F&& f) {
#define HUBEDIT_ACTS(N, K)                                            \
  switch (act) {                                                      \
    case 0: f.template operator()<N, 0, K>(); break;                  \
    case 1: f.template operator()<N, 1, K>(); break;                  \
    case 2: f.template operator()<N, 2, K>(); break;                  \
    case 3: f.template operator()<N, 3, K>(); break;                  \
    case 4: f.template operator()<N, 4, K>(); break;                  \
    default: f.template operator()<N, 5, K>(); break;                 \
  }
  if (norm == 1) {
    if (keep) { HUBEDIT_ACTS(1, true) } else { HUBEDIT_ACTS(1, false) }
  } else if (norm == 2) {
    if (keep) { HUBEDIT_ACTS(2, true) } else { HUBEDIT_ACTS(2, false) }
  } else {
    if (keep) { HUBEDIT_ACTS(0, true) } else { HUBEDIT_ACTS(0, false) }
  }
#undef HUBEDIT_ACTS
}

inline Block block_of(int64_t g, const float* bias, const float* gamma, const float* beta, const int64_t* drop_key, const int64_t* drop_thr,
               const float* drop_scale, const int32_t* width, int64_t B, int64_t W, float eps) {
  const bool k = drop_key && drop_thr[g] > 0;
  return Block{bias + g * W,
               gamma ? gamma + g * W : nullptr,
               beta ? beta + g * W : nullptr,
               k ? (uint32_t)drop_key[g] : 0u,
               k ? (uint32_t)drop_thr[g] : 0u,
               k ? drop_scale[g] : 1.f,
               B,
               W,
               (int64_t)width[g],
               eps};
}

}  // namespace

