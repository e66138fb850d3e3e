// The calibration features' saliency passes (hubedit/graph/calibration.py), one model at a time, in C++
// (hubedit/graph/saliency_kernel.py builds and calls this file; SaliencyPass in saliency.py is the torch
// formulation, the reference to float rounding).
//
// For each model: the saliency |w * dL/dw| of every weight on the calibration inputs x (B, F), L the mean
// cross-entropy against the model's own predictions (argmax of its dense logits, first maximum on ties);
// then `rounds` rounds of iterative pruning: round r keeps the k[r] highest scores among the weights still
// kept (ties by position), and takes the saliency again on the masked model against the same labels.
//
// The models' layout and plans: mlp_plan.h.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "mlp_plan.h"

namespace {

// One model's saliency passes, with buffers reused across passes and models.
struct Model {
  const ModelPlan& plan;
  const float* x;  // (B, F)
  int64_t B, F;
  const float* w;      // the model's weights (n_edges)
  const float* nodes;  // the model's node values (n_nodes, 5)
  float eps;
  std::vector<int64_t> width;             // width of layer l (0: F)
  std::vector<std::vector<float>> acts;   // (B, width[l]) per layer; acts[0] unused (x)
  std::vector<std::vector<float>> pre;    // hidden layers: pre-activation (after the norm)
  std::vector<std::vector<float>> xhat;   // LayerNorm: normalised z (before its affine map)
  std::vector<std::vector<float>> rstd;   // LayerNorm: per row; BatchNorm: per unit (times the norm weight)
  std::vector<std::vector<float>> grads;  // dL/d acts[l]
  std::vector<float> wm, wt, gw, gz, probs;
  std::vector<int64_t> labels;

  Model(const ModelPlan& p, const float* x_, int64_t B_, int64_t F_, const float* ev, const float* nv, float eps_)
      : plan(p), x(x_), B(B_), F(F_), w(ev + p.edge_off), nodes(nv + p.node_off * kNodeFeatures), eps(eps_) {
    const size_t L = p.blocks.size() + 1;
    width.assign(L, F);
    for (size_t i = 0; i < p.blocks.size(); ++i) width[i + 1] = p.blocks[i].rows;
    acts.resize(L), pre.resize(L), xhat.resize(L), rstd.resize(L), grads.resize(L);
    int64_t biggest = 0;
    for (size_t l = 1; l < L; ++l) {
      acts[l].resize(B * width[l]), grads[l].resize(B * width[l]);
      if ((int64_t)l <= p.depth) pre[l].resize(B * width[l]);
      if (p.norm == 2) xhat[l].resize(B * width[l]), rstd[l].resize(B);
      if (p.norm == 1) rstd[l].resize(width[l]);
    }
    for (const auto& b : p.blocks) biggest = std::max(biggest, b.rows * b.cols);
    wm.resize(biggest), wt.resize(biggest), gw.resize(biggest);
    labels.resize(B);
  }

  const float* act_of(int64_t l) const { return l == 0 ? x : acts[l].data(); }

  template <int NORM, int ACT>
  void hidden_forward(int64_t l) {  // acts[l] holds z; norm and activation in place, keeping what backward needs
    norm_act<NORM, ACT>(B, width[l], nodes + plan.blocks[l - 1].node * kNodeFeatures, eps, acts[l].data(),
                        pre[l].data(), NORM == 2 ? xhat[l].data() : nullptr, NORM == 0 ? nullptr : rstd[l].data());
  }

  template <int NORM, int ACT>
  void hidden_backward(int64_t l, float* __restrict out) {  // dL/dz of layer l from dL/d acts[l]
    const int64_t n = width[l];
    const float* nd = nodes + plan.blocks[l - 1].node * kNodeFeatures;
    for (int64_t b = 0; b < B; ++b) {
      const float* __restrict g = grads[l].data() + b * n;
      const float* __restrict pb = pre[l].data() + b * n;
      float* __restrict o = out + b * n;
      for (int64_t u = 0; u < n; ++u) o[u] = g[u] * act_slope<ACT>(pb[u]);
      if constexpr (NORM == 1) {
        for (int64_t u = 0; u < n; ++u) o[u] *= rstd[l][u];
      } else if constexpr (NORM == 2) {
        const float* __restrict xh = xhat[l].data() + b * n;
        float s = 0.f, sx = 0.f;
        for (int64_t u = 0; u < n; ++u) {
          o[u] *= nd[u * kNodeFeatures + kNormWeight];
          s += o[u], sx += o[u] * xh[u];
        }
        const float ms = s / (float)n, msx = sx / (float)n, r = rstd[l][b];
        for (int64_t u = 0; u < n; ++u) o[u] = (o[u] - ms - xh[u] * msx) * r;
      }
    }
  }

  template <typename Fn>
  void dispatch(Fn&& fn) {
    dispatch_kinds(plan.norm, plan.act, fn);
  }

  // the block's masked weights, row-major (rows, cols) into wm, and transposed (cols, rows) into wt when
  // `transposed` (the forward pass's form)
  void masked(const BlockPlan& bp, const float* mask, bool transposed) {
    const int64_t rows = bp.rows, cols = bp.cols, n = rows * cols;
    const float* __restrict wb = w + bp.start;
    float* __restrict m_ = wm.data();
    if (mask) {
      const float* __restrict mb = mask + bp.start;
#pragma omp simd
      for (int64_t e = 0; e < n; ++e) m_[e] = wb[e] * mb[e];
    } else {
      memcpy(m_, wb, sizeof(float) * n);
    }
    if (transposed)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) wt[c * rows + r] = m_[r * cols + c];
  }

  // |w * dL/dw| of the model masked by `mask` (null: dense) into sal; labels are taken when `own`.
  // Returns false where a saliency is not finite. The products are gemm.h's register-tiled ones.
  bool pass(const float* mask, bool own, float* sal) {
    const auto& blocks = plan.blocks;
    const int64_t nb = (int64_t)blocks.size();
    // forward
    for (int64_t i = 0; i < nb; ++i) {
      const BlockPlan& bp = blocks[i];
      const int64_t rows = bp.rows, cols = bp.cols, l = i + 1;
      masked(bp, mask, true);
      float* __restrict z = acts[l].data();
      const float* nd = nodes + bp.node * kNodeFeatures;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t r = 0; r < rows; ++r) z[b * rows + r] = nd[r * kNodeFeatures + kBias];
      for (const Part& pt : bp.parts)  // z += a_src @ W[:, c0:c1]^T
        gemm(B, rows, pt.c1 - pt.c0, act_of(pt.src), width[pt.src], 1, wt.data() + pt.c0 * rows, rows, z, rows, true);
      if (l <= plan.depth) dispatch([&]<int N, int A>() { hidden_forward<N, A>(l); });
    }
    // loss gradient wrt the logits: (softmax - onehot) / B
    const int64_t out_l = nb, C = width[out_l];
    float* logits = acts[out_l].data();
    probs.resize(B * C);
    for (int64_t b = 0; b < B; ++b) {
      const float* lr = logits + b * C;
      if (own) {
        int64_t arg = 0;
        for (int64_t c = 1; c < C; ++c)
          if (lr[c] > lr[arg]) arg = c;
        labels[b] = arg;
      }
      float mx = lr[0];
      for (int64_t c = 1; c < C; ++c) mx = fmaxf(mx, lr[c]);
      float se = 0.f;
      for (int64_t c = 0; c < C; ++c) se += expf(lr[c] - mx);
      for (int64_t c = 0; c < C; ++c)
        probs[b * C + c] = (expf(lr[c] - mx) / se - (c == labels[b] ? 1.f : 0.f)) / (float)B;
    }
    for (int64_t l = 1; l < out_l; ++l) std::fill(grads[l].begin(), grads[l].end(), 0.f);
    // backward, block after block from the output
    for (int64_t i = nb - 1; i >= 0; --i) {
      const BlockPlan& bp = blocks[i];
      const int64_t rows = bp.rows, cols = bp.cols, l = i + 1;
      const float* g;
      if (l == out_l) {
        g = probs.data();
      } else {
        gz.resize(B * rows);
        dispatch([&]<int N, int A>() { hidden_backward<N, A>(l, gz.data()); });
        g = gz.data();
      }
      masked(bp, mask, false);
      float* __restrict gw_ = gw.data();  // dL/d(masked weight), row-major (rows, cols)
      for (const Part& pt : bp.parts) {
        const int64_t ws = width[pt.src], nc = pt.c1 - pt.c0;
        // dW[:, c0:c1] = g^T @ a_src;  d a_src += g @ W[:, c0:c1]
        gemm(rows, nc, B, g, 1, rows, act_of(pt.src), ws, gw_ + pt.c0, cols, false);
        if (pt.src != 0) gemm(B, nc, rows, g, rows, 1, wm.data() + pt.c0, cols, grads[pt.src].data(), ws, true);
      }
      bool finite = true;
      const float* __restrict wb = w + bp.start;
      const float* __restrict mb = mask ? mask + bp.start : nullptr;
      float* __restrict sb = sal + bp.start;
      for (int64_t e = 0; e < rows * cols; ++e) {
        const float s = fabsf(wb[e] * gw_[e] * (mb ? mb[e] : 1.f));
        sb[e] = s;
        finite &= finite_bits(s);
      }
      if (!finite) return false;
    }
    return true;
  }
};

// out[e * stride] = (log v(e) - mean) / max(std, 1e-6) over the model's n values (the population std)
template <typename V>
void standardised_log(int64_t n, V&& v, float* out, int64_t stride) {
  double sum = 0.0;
  for (int64_t e = 0; e < n; ++e) {
    const float lv = logf(v(e));
    out[e * stride] = lv;
    sum += lv;
  }
  const double mean = sum / (double)std::max<int64_t>(n, 1);
  double var = 0.0;
  for (int64_t e = 0; e < n; ++e) var += ((double)out[e * stride] - mean) * ((double)out[e * stride] - mean);
  const double inv = 1.0 / std::max(sqrt(var / (double)std::max<int64_t>(n, 1)), 1e-6);
  for (int64_t e = 0; e < n; ++e) out[e * stride] = (float)(((double)out[e * stride] - mean) * inv);
}

}  // namespace

extern "C" {

// Saliency features of n_models models (plans at plan + plan_off[m]) on x (B, F), split over n_threads:
// sal0 (E) the dense saliency; with rounds > 0 also mask (E) and score (E), the last round's mask and
// saliency, k (n_models, rounds) the weights each round keeps; features (E, 2 or 4 with rounds) the
// calibration features of hubedit/graph/calibration.py. Returns 0, 1 where a saliency is not finite
// (the outputs are then incomplete), -2 where memory or threads ran out.
int hubedit_saliency_features(int64_t n_models, const int64_t* plan, const int64_t* plan_off, const float* eps,
                              const float* x, int64_t B, int64_t F, const float* edge_values, const float* node_values,
                              int64_t rounds, const int64_t* k, float* sal0, float* mask, float* score,
                              float* features, int64_t n_threads) {
  return over_models(n_models, plan, plan_off, n_threads, [&](const ModelPlan& p, int64_t m) {
    Model md(p, x, B, F, edge_values, node_values, eps[m]);
    float* s0 = sal0 + p.edge_off;
    if (!md.pass(nullptr, true, s0)) return false;
    const float* w = edge_values + p.edge_off;
    const int64_t ncol = rounds ? 4 : 2;
    float* ft = features + p.edge_off * ncol;
    // the calibration features (hubedit/graph/calibration.py): standardised log |w| and log saliency
    standardised_log(p.n_edges, [&](int64_t e) { return fabsf(w[e]) + 1e-8f; }, ft, ncol);
    standardised_log(p.n_edges, [&](int64_t e) { return s0[e] + 1e-12f; }, ft + 1, ncol);
    if (rounds == 0) return true;
    float* mk = mask + p.edge_off;
    float* sc = score + p.edge_off;
    std::vector<int64_t> order;
    std::vector<float> key(p.n_edges);
    std::fill(mk, mk + p.n_edges, 1.f);
    memcpy(sc, s0, sizeof(float) * p.n_edges);
    for (int64_t r = 0; r < rounds; ++r) {
      for (int64_t e = 0; e < p.n_edges; ++e) key[e] = mk[e] > 0.f ? sc[e] : -1.f;  // pruned stay pruned
      top_k_mask(key.data(), p.n_edges, k[m * rounds + r], mk, order);
      if (!md.pass(mk, false, sc)) return false;
    }
    // and the last round's mask and standardised log saliency of the kept weights
    for (int64_t e = 0; e < p.n_edges; ++e) ft[e * ncol + 2] = mk[e];
    standardised_log(p.n_edges, [&](int64_t e) { return sc[e] * mk[e] + 1e-12f; }, ft + 3, ncol);
    return true;
  });
}

}  // extern "C"
