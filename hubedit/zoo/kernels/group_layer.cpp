// Fused hidden-layer kernels of the batched zoo trainer (hubedit/zoo/fused.py builds and loads this file).
//
// A group of G models is held as padded tensors; after a layer's batched matrix product z, every model
// applies its own bias, normalisation, activation and dropout to its (B, W) block.
// Written in torch ops, a group that mixes kinds computes every kind for every element and the
// compiler emits about ten passes over (G, B, W) per layer. Here each model's block (at most
// 256 x 64 floats, resident in cache) is processed with its own kinds only: the forward pass reads z
// once for the statistics and once to write h; the backward pass reads the output gradient and z and
// recomputes the derivative of a relu / leaky relu and its dropout draw instead of storing them (the
// step is memory-bound); the other activations' derivatives (exp, erf, tanh) are cheaper to store in d
// than to recompute.
//
// Conventions (match the torch reference in trainer.py to float rounding):
//   norm  0 none, 1 BatchNorm (training: batch statistics, biased variance), 2 LayerNorm over the model's
//         real width n (padded units: y = 0, since gamma = beta = 0 there)
//   act   0 relu, 1 leaky relu (0.01), 2 gelu (erf), 3 silu, 4 tanh, 5 sigmoid
//   y = (z + bias - mean) * rstd * gamma + beta (y = z + bias without norm);  h = act(y) * keep;
//   d = act'(y) * keep (act >= 2 only)
//   keep = hash31((key + b * 1024 + w) & M31) >= threshold ? 1 / (1 - p) : 0 (ModelGroup._dropout_keep)
//   BatchNorm statistics out: bn_mean / bn_var (G, W); LayerNorm: ln_mean / ln_rstd (G, B).
// Compiled with -O3 -march=native -ffast-math so that the loops vectorise (expf / erff / tanhf from
// glibc's libmvec); one thread, as the trainer runs.
#include <math.h>
#include <stdint.h>

#include <vector>

namespace {

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
inline uint32_t hash31(uint32_t x) {
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
inline float keep_of(uint32_t row_key, int64_t w, uint32_t thr, float scale) {
  if constexpr (KEEP) return hash31((row_key + (uint32_t)w) & kM31) >= thr ? scale : 0.f;
  return 1.f;
}

// sigmoid without an overflowing exp: -ffast-math assumes finite values, and 1 / (1 + expf(-y)) returns
// NaN instead of 0 once expf(-y) overflows (y < -88)
inline float sigmoid(float y) {
  const float e = expf(-fabsf(y));
  const float r = 1.f / (1.f + e);
  return y >= 0.f ? r : e * r;
}

template <int ACT>
inline float act_value(float y) {
  if constexpr (ACT == 0) return y > 0.f ? y : 0.f;
  if constexpr (ACT == 1) return y > 0.f ? y : y * kSlope;
  if constexpr (ACT == 2) return y * (0.5f * (1.f + erff(y * kInvSqrt2)));
  if constexpr (ACT == 3) return y * sigmoid(y);
  if constexpr (ACT == 4) return tanhf(y);
  return sigmoid(y);
}

template <int ACT>
inline float act_slope(float y) {
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
inline float normed(const float* __restrict gamma, const float* __restrict beta, float z, int64_t w,
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
inline void row_gy(const Block& p, int64_t b, const float* __restrict g, const float* __restrict zr,
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

Block block_of(int64_t g, const float* bias, const float* gamma, const float* beta, const int64_t* drop_key, const int64_t* drop_thr,
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

extern "C" {

int hubedit_group_layer_max_width() { return 1024; }

// z (before the bias), h: (G, B, W); d: (G, B, W), written for models with act >= 2 only (null: no such
// model); bias, gamma, beta, bn_mean, bn_var: (G, W); ln_mean, ln_rstd: (G, B); norm, act, width: (G,) int32. Dropout (null drop_key: none):
// per model its hash key (int64), threshold round(p 2^31) (int64; 0: no dropout) and scale 1 / (1 - p).
// gamma / beta may be null if no model normalises.
void hubedit_group_layer_forward(const float* z, const float* bias, const float* gamma, const float* beta, const int64_t* drop_key,
                                 const int64_t* drop_thr, const float* drop_scale, const int32_t* norm,
                                 const int32_t* act, const int32_t* width, int64_t G, int64_t B, int64_t W, float eps,
                                 float* h, float* d, float* bn_mean, float* bn_var, float* ln_mean, float* ln_rstd) {
  for (int64_t g = 0; g < G; ++g) {
    const Block p = block_of(g, bias, gamma, beta, drop_key, drop_thr, drop_scale, width, B, W, eps);
    const int64_t o = g * B * W;
    float *bm = bn_mean + g * W, *bv = bn_var + g * W, *lm = ln_mean + g * B, *lr = ln_rstd + g * B;
    dispatch(norm[g], act[g], p.thr > 0, [&]<int N, int A, bool K>() {
      block_forward<N, A, K>(p, z + o, h + o, d ? d + o : nullptr, bm, bv, lm, lr);
    });
    if (norm[g] != 1)
      for (int64_t w = 0; w < W; ++w) bm[w] = 0.f, bv[w] = 0.f;
    if (norm[g] != 2)
      for (int64_t b = 0; b < B; ++b) lm[b] = 0.f, lr[b] = 0.f;
  }
}

// gh: gradient of h, (G, B, W) with strides (gh_sg, gh_sb, 1) (a slice of a concatenation's gradient
// needs no copy); the other inputs as in the forward pass, whose d and statistics it reads. Outputs gz
// (G, B, W), gbias (G, W), ggamma / gbeta (G, W) (null if no model normalises).
void hubedit_group_layer_backward(const float* gh, int64_t gh_sg, int64_t gh_sb, const float* z, const float* d,
                                  const float* bias, const float* gamma, const float* beta, const float* bn_mean, const float* bn_var,
                                  const float* ln_mean, const float* ln_rstd, const int64_t* drop_key,
                                  const int64_t* drop_thr, const float* drop_scale, const int32_t* norm,
                                  const int32_t* act, const int32_t* width, int64_t G, int64_t B, int64_t W, float eps,
                                  float* gz, float* gbias, float* ggamma, float* gbeta) {
  std::vector<float> scratch((size_t)(B * W));
  for (int64_t g = 0; g < G; ++g) {
    const Block p = block_of(g, bias, gamma, beta, drop_key, drop_thr, drop_scale, width, B, W, eps);
    const int64_t o = g * B * W;
    float* gg = ggamma ? ggamma + g * W : nullptr;
    float* gb = gbeta ? gbeta + g * W : nullptr;
    const float* dg = stores_slope(act[g]) ? d + o : nullptr;
    dispatch(norm[g], act[g], p.thr > 0, [&]<int N, int A, bool K>() {
      block_backward<N, A, K>(p, gh + g * gh_sg, gh_sb, z + o, dg, bn_mean + g * W, bn_var + g * W, ln_mean + g * B,
                              ln_rstd + g * B, gz + o, gbias + g * W, gg, gb, scratch.data());
    });
    if (norm[g] == 0 && gg)
      for (int64_t w = 0; w < W; ++w) gg[w] = 0.f, gb[w] = 0.f;
  }
}

}  // extern "C"
