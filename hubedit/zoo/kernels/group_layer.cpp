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
#include "layer_kernels.h"

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
