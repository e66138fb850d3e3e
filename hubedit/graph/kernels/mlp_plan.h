// What the per-model kernels of parameter graphs share (saliency.cpp, refit.cpp): a model's plan, its
// layers' norm and activation in evaluation mode, and a stable top-k mask.
//
// Conventions (hubedit/graph/layout.py): a model's weights are its blocks in order, block l (destination
// layer l = 1..depth+1) a (rows, cols) row-major matrix whose columns are its parts' source layers side by
// side; node values are (N, 5) rows [bias, norm weight, norm bias, running mean, running var], layer l's
// nodes at node offset `node`; hidden layers apply the norm (BatchNorm with its running statistics,
// LayerNorm over the layer) and the activation, the output layer neither.
//
// The plan of a model (int64; hubedit/graph/saliency.py builds it): edge offset, node offset, depth,
// activation code, norm code, blocks, then per block: start (edge offset in the model), rows, cols, node
// offset of its layer (in the model), parts, and per part: source layer, first column, end column.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <exception>
#include <numeric>
#include <thread>
#include <vector>

#include "../../zoo/kernels/gemm.h"
#include "../../zoo/kernels/layer_kernels.h"

namespace {

constexpr int kBias = 0, kNormWeight = 1, kNormBias = 2, kRunningMean = 3, kRunningVar = 4, kNodeFeatures = 5;

struct Part {
  int64_t src, c0, c1;
};

struct BlockPlan {
  int64_t start, rows, cols, node;
  std::vector<Part> parts;
};

struct ModelPlan {
  int64_t edge_off, node_off, depth, act, norm;
  std::vector<BlockPlan> blocks;
  int64_t n_edges = 0;
};

ModelPlan parse(const int64_t* p) {
  ModelPlan m;
  m.edge_off = p[0], m.node_off = p[1], m.depth = p[2], m.act = p[3], m.norm = p[4];
  const int64_t n_blocks = p[5];
  p += 6;
  for (int64_t i = 0; i < n_blocks; ++i) {
    BlockPlan b{p[0], p[1], p[2], p[3], {}};
    const int64_t n_parts = p[4];
    p += 5;
    for (int64_t j = 0; j < n_parts; ++j, p += 3) b.parts.push_back({p[0], p[1], p[2]});
    m.n_edges += b.rows * b.cols;
    m.blocks.push_back(std::move(b));
  }
  return m;
}

inline bool finite_bits(float v) {  // -ffast-math may fold isfinite away: test the exponent bits
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  return (u & 0x7f800000u) != 0x7f800000u;
}

// Norm (evaluation mode) and activation of one hidden layer's pre-activations z (B, n), in place; layer
// nodes nd (n, 5). Keeps, where the pointers are given, the activation's input (pre), LayerNorm's
// normalised z (xhat) and 1/std per row, or BatchNorm's scale per unit (rstd).
template <int NORM, int ACT>
void norm_act(int64_t B, int64_t n, const float* nd, float eps, float* z, float* pre, float* xhat, float* rstd) {
  std::vector<float> bn_scale(NORM == 1 ? n : 0);
  if constexpr (NORM == 1)
    for (int64_t u = 0; u < n; ++u) {
      bn_scale[u] = nd[u * kNodeFeatures + kNormWeight] / sqrtf(nd[u * kNodeFeatures + kRunningVar] + eps);
      if (rstd) rstd[u] = bn_scale[u];
    }
  for (int64_t b = 0; b < B; ++b) {
    float* __restrict zr = z + b * n;
    float* __restrict pb = pre ? pre + b * n : zr;
    if constexpr (NORM == 2) {
      float s = 0.f, v = 0.f;
      for (int64_t u = 0; u < n; ++u) s += zr[u];
      const float mean = s / (float)n;
      for (int64_t u = 0; u < n; ++u) v += (zr[u] - mean) * (zr[u] - mean);
      const float r = 1.f / sqrtf(v / (float)n + eps);
      if (rstd) rstd[b] = r;
      float* __restrict xh = xhat ? xhat + b * n : nullptr;
      for (int64_t u = 0; u < n; ++u) {
        const float xv = (zr[u] - mean) * r;
        if (xh) xh[u] = xv;
        pb[u] = xv * nd[u * kNodeFeatures + kNormWeight] + nd[u * kNodeFeatures + kNormBias];
      }
    } else if constexpr (NORM == 1) {
      for (int64_t u = 0; u < n; ++u)
        pb[u] = (zr[u] - nd[u * kNodeFeatures + kRunningMean]) * bn_scale[u] + nd[u * kNodeFeatures + kNormBias];
    } else if (pre) {
      for (int64_t u = 0; u < n; ++u) pb[u] = zr[u];
    }
    for (int64_t u = 0; u < n; ++u) zr[u] = act_value<ACT>(pb[u]);
  }
}

// fn.template operator()<NORM, ACT>() for a model's norm and activation codes
template <typename Fn>
void dispatch_kinds(int64_t norm, int64_t act, Fn&& fn) {
#define HUBEDIT_CASE(N, A) \
  if (norm == N && act == A) return fn.template operator()<N, A>();
#define HUBEDIT_ACTS(N) \
  HUBEDIT_CASE(N, 0) HUBEDIT_CASE(N, 1) HUBEDIT_CASE(N, 2) HUBEDIT_CASE(N, 3) HUBEDIT_CASE(N, 4) HUBEDIT_CASE(N, 5)
  HUBEDIT_ACTS(0) HUBEDIT_ACTS(1) HUBEDIT_ACTS(2)
#undef HUBEDIT_ACTS
#undef HUBEDIT_CASE
}

// mask (n) = 1 at the k highest keys, ties by position (a stable sort), 0 elsewhere
void top_k_mask(const float* key, int64_t n, int64_t k, float* mask, std::vector<int64_t>& order) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[a] > key[b]; });
  std::fill(mask, mask + n, 0.f);
  for (int64_t i = 0; i < std::min(k, n); ++i) mask[order[i]] = 1.f;
}

// Parse the n_models plans (at plan + plan_off[m]) and call model(plan_of_m, m) for every model, model m on
// thread m % nt of nt = min(n_threads, n_models) threads; model returns false to stop its thread (a non-finite
// or failed model). Returns 0, 1 where a model returned false, -2 where memory or threads ran out. No C++
// exception crosses into the caller (ctypes).
template <typename Fn>
int over_models(int64_t n_models, const int64_t* plan, const int64_t* plan_off, int64_t n_threads, Fn&& model) {
  try {
    std::vector<ModelPlan> plans;
    plans.reserve(n_models);
    for (int64_t m = 0; m < n_models; ++m) plans.push_back(parse(plan + plan_off[m]));
    const int64_t nt = std::max<int64_t>(1, std::min(n_threads, n_models));
    std::vector<int> status((size_t)nt, 0);
    auto work = [&](int64_t t) {
      for (int64_t m = t; m < n_models; m += nt)
        if (!model(plans[m], m)) {
          status[t] = 1;
          return;
        }
    };
    std::vector<std::thread> pool;
    try {
      for (int64_t t = 1; t < nt; ++t) pool.emplace_back(work, t);
    } catch (const std::exception&) {  // no more threads: join the started ones, then give up
      for (auto& th : pool) th.join();
      return -2;
    }
    work(0);
    for (auto& th : pool) th.join();
    for (int s : status)
      if (s) return s;
    return 0;
  } catch (const std::exception&) {
    return -2;
  }
}

}  // namespace
