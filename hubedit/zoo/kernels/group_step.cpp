// A whole training step of a group of models, one model after the other, at each model's real size
// (hubedit/zoo/fused.py builds this file with group_layer.cpp; ModelGroup.train_step calls it).
//
// The padded formulation (batched matrix products over the group's widest layers, then the fused layer
// kernels over (G, B, W) tensors) multiplies 1.5-2.2x the real multiply-adds and streams every layer's
// activations through memory several times. Here each model's forward pass, loss, backward pass and
// AdamW update run on its own real (unpadded) blocks -- at most a few hundred KB, resident in the core's
// L2 cache -- with small register-blocked matrix products; padded entries of the parameter buffers are
// never read or written. Every model's arithmetic depends only on that model, so its result does not
// depend on the group it trains in.
//
// Conventions (ModelGroup in trainer.py, whose torch formulation is the reference to float rounding):
//   * parameters live in the group's blocked 1-D buffers: parameter "w{l}" of model g is a (K_l, W_l)
//     row-major slab at offset G * off + g * K_l * W_l; the model's real sub-blocks are its input blocks'
//     rows (the previous layer at block 0, skip sources after it) and its first rw_l columns;
//   * a hidden layer is z = sum over the model's input blocks of h_src @ W_block, then bias, norm,
//     activation and dropout (layer_kernels.h: block_forward / block_backward);
//   * the loss is the model's mean cross-entropy over its batch (two classes: softplus of the logit
//     difference); a model whose loss or gradient is not finite is left untouched and reported with a NaN
//     loss (the caller freezes it);
//   * AdamW on the model's real entries only (the segments list), torch's update rule.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "gemm.h"
#include "layer_kernels.h"

namespace {

constexpr int kMaxLayers = 8;   // hidden layers
constexpr int kMaxBlocks = 8;   // input blocks of a hidden layer (previous layer + skip sources)

// isfinite from the bits: -ffast-math lets the compiler assume finite values and fold isfinite() to true
inline bool finite_bits(double v) {
  uint64_t u;
  memcpy(&u, &v, sizeof u);
  return ((u >> 52) & 0x7FF) != 0x7FF;
}

// whether every entry of the (offset, length) segments of buf is finite (from the bits, as above)
bool finite_grads(const float* buf, const int64_t* seg, int64_t n_seg) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n_seg; ++i) {
    const float* __restrict p = buf + seg[2 * i];
    const int64_t len = seg[2 * i + 1];
#pragma omp simd reduction(| : bad)
    for (int64_t k = 0; k < len; ++k) {
      uint32_t u;
      memcpy(&u, p + k, sizeof u);
      bad |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
    }
  }
  return bad == 0;
}

// dst (cols x rows) = transpose of the (rows x cols) block at src with row stride lds
void transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * lds + c];
}

}  // namespace

extern "C" {

// The group's layout and per-model plan (fixed for the group's life; see ModelGroup._native_plan).
struct GroupPlan {
  int64_t G, F, O, D;            // models, input features (real), classes, hidden layers
  float eps;                      // norm epsilon
  int64_t W[kMaxLayers + 1];      // padded width of the input block (W[0]) and of every hidden layer
  int64_t K[kMaxLayers + 1];      // padded rows of hidden layer l's weight (its concatenated inputs)
  int64_t off_w[kMaxLayers + 1], off_b[kMaxLayers + 1], off_g[kMaxLayers + 1], off_n[kMaxLayers + 1];  // -1: none
  int64_t off_wout, off_bout;     // element offsets of the parameters' blocks in the 1-D buffers
  int64_t nblk[kMaxLayers + 1];                  // input blocks of hidden layer l
  int64_t blk_src[kMaxLayers + 1][kMaxBlocks];   // their source layer (0: the input)
  int64_t blk_row[kMaxLayers + 1][kMaxBlocks];   // their first row in the layer's weight
  const int32_t* depth;           // (G,)
  const int32_t* rw;              // (G, D + 1): real width of model g at layer l (rw[g, 0] = F)
  const int32_t* blk_used;        // (G, D + 1): bit j set if model g uses input block j of layer l
  const int32_t* norm;            // (G,) NORM codes
  const int32_t* act;             // (G,) ACT codes
  const int64_t* drop_base;       // (G,) dropout seed (31 bits)
  const int64_t* drop_thr;        // (G,) round(p 2^31), 0: no dropout
  const float* drop_scale;        // (G,) 1 / (1 - p)
  const int64_t* seg;             // (S, 2) (offset, length) of the real entries of every model, model after model
  const int64_t* seg_ptr;         // (G + 1,) model g's segments are seg[seg_ptr[g] .. seg_ptr[g + 1])
  float* running_mean[kMaxLayers + 1];  // (G, W_l) BatchNorm running statistics of hidden layer l
  float* running_var[kMaxLayers + 1];
};

// The per-step state: parameters, gradients and AdamW moments (1-D blocked buffers), per-model
// learning rate, decoupled decay factor (1 - lr wd) and liveness.
struct GroupState {
  float* flat;
  float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  const float* lr;
  const float* decay;
  const uint8_t* alive;
};

// One optimiser step of every live model on its batch x (G, B, F), labels y (G, B) (int64): dropout of
// optimiser step `step`, AdamW with bias-correction factor scale = -sqrt(bc2) / bc1 and eps_term =
// eps sqrt(bc2). Writes each model's mean loss to loss (G,) (NaN / inf: the model was not updated).
void hubedit_group_step(const GroupPlan* P, const GroupState* S, const float* x, const int64_t* y, int64_t B,
                        int64_t step, float scale, float eps_term, float* loss) {
  using namespace std;
  const int64_t G = P->G, F = P->F, O = P->O, D = P->D;
  int64_t wmax = 1, kmax = F;
  for (int64_t l = 1; l <= D; ++l) wmax = max(wmax, P->W[l]), kmax = max(kmax, P->K[l]);
  wmax = max(wmax, O);
  // per-model workspace at the group's widest sizes (every model's blocks fit)
  vector<float> hbuf((size_t)((D + 1) * B * wmax)), zbuf((size_t)(D * B * wmax)), dbuf((size_t)(D * B * wmax));
  vector<float> ghbuf((size_t)((D + 1) * B * wmax)), gz((size_t)(B * wmax)), scratch((size_t)(B * wmax));
  vector<float> stats((size_t)(D * 2 * max(B, wmax))), wt((size_t)(wmax * max(kmax, wmax))), logits((size_t)(B * O)),
      glog((size_t)(B * O));
  float* h[kMaxLayers + 1];
  float *z[kMaxLayers + 1], *d[kMaxLayers + 1], *gh[kMaxLayers + 1], *st[kMaxLayers + 1];
  for (int64_t l = 0; l <= D; ++l) h[l] = hbuf.data() + l * B * wmax, gh[l] = ghbuf.data() + l * B * wmax;
  for (int64_t l = 1; l <= D; ++l) {
    z[l] = zbuf.data() + (l - 1) * B * wmax;
    d[l] = dbuf.data() + (l - 1) * B * wmax;
    st[l] = stats.data() + (l - 1) * 2 * max(B, wmax);
  }
  const float bn_unbias = (float)(0.1 * (double)B / (double)(B - 1));

  for (int64_t g = 0; g < G; ++g) {
    if (!S->alive[g]) {
      loss[g] = 0.f;
      continue;
    }
    const int32_t* rw = P->rw + g * (D + 1);
    const int32_t* used = P->blk_used + g * (D + 1);
    const int64_t dg = P->depth[g];
    const int norm = P->norm[g], act = P->act[g];
    const bool keep = P->drop_thr[g] > 0;
    float* flat = S->flat;
    float* grad = S->grad;
    auto wslab = [&](float* buf, int64_t l) { return buf + G * P->off_w[l] + g * P->K[l] * P->W[l]; };
    auto vec = [&](float* buf, int64_t off, int64_t l) { return buf + G * off + g * P->W[l]; };
    // hidden layer l's per-model block: bias, norm parameters, dropout draw (ModelGroup._dropout_key)
    auto layer_block = [&](int64_t l) {
      const int64_t n = rw[l];
      const uint32_t key = hash31((uint32_t)((uint64_t)P->drop_base[g] + (uint64_t)step * 0x9E3779B1ull +
                                             (uint64_t)l * 0x632BE5ABull) & kM31);
      return Block{vec(flat, P->off_b[l], l),
                   norm ? vec(flat, P->off_g[l], l) : nullptr,
                   norm ? vec(flat, P->off_n[l], l) : nullptr,
                   keep ? key : 0u,
                   keep ? (uint32_t)P->drop_thr[g] : 0u,
                   keep ? P->drop_scale[g] : 1.f,
                   B,
                   n,
                   n,
                   P->eps};
    };
    // input of the first layer: the model's batch rows (stride F)
    const float* xg = x + g * B * F;
    auto src_of = [&](int64_t s, int64_t& ld) -> const float* {
      ld = s == 0 ? F : rw[s];
      return s == 0 ? xg : h[s];
    };

    // ---- forward
    for (int64_t l = 1; l <= dg; ++l) {
      const int64_t n = rw[l], Wl = P->W[l];
      const float* wl = wslab(flat, l);
      bool first = true;
      for (int64_t j = 0; j < P->nblk[l]; ++j) {
        if (!(used[l] >> j & 1)) continue;
        int64_t ld;
        const float* a = src_of(P->blk_src[l][j], ld);
        gemm(B, n, rw[P->blk_src[l][j]], a, ld, 1, wl + P->blk_row[l][j] * Wl, Wl, z[l], n, !first);
        first = false;
      }
      const Block p = layer_block(l);
      float* s = st[l];  // BatchNorm: mean, var (n each); LayerNorm: mean, rstd (B each)
      dispatch(norm, act, keep, [&]<int N, int A, bool K>() {
        block_forward<N, A, K>(p, z[l], h[l], d[l], s, s + n, s, s + B);
      });
      if (norm == 1) {
        float* rm = P->running_mean[l] + g * Wl;
        float* rv = P->running_var[l] + g * Wl;
        for (int64_t w = 0; w < n; ++w) {
          rm[w] = rm[w] * 0.9f + s[w] * 0.1f;
          rv[w] = rv[w] * 0.9f + s[n + w] * bn_unbias;
        }
      }
    }
    const int64_t nd = rw[dg];
    const float* wout = flat + G * P->off_wout + g * P->W[D] * O;
    const float* bout = flat + G * P->off_bout + g * O;
    gemm(B, O, nd, h[dg], nd, 1, wout, O, logits.data(), O, false);

    // ---- loss and its gradient wrt the logits (mean over the batch)
    const int64_t* yg = y + g * B;
    double total = 0.0;
    const float invB = 1.f / (float)B;
    for (int64_t b = 0; b < B; ++b) {
      float* lr_ = logits.data() + b * O;
      float* gl = glog.data() + b * O;
      for (int64_t o = 0; o < O; ++o) lr_[o] += bout[o];
      if (O == 2) {  // softplus(t), t = +-(l1 - l0): the trainer's two-class formulation
        const float sign = yg[b] == 1 ? -1.f : 1.f;
        const float t = sign * (lr_[1] - lr_[0]);
        total += fmaxf(t, 0.f) + log1pf(expf(-fabsf(t)));
        const float gt = sigmoid(t) * invB * sign;
        gl[1] = gt, gl[0] = -gt;
      } else {  // log-softmax cross-entropy
        float mx = lr_[0];
        for (int64_t o = 1; o < O; ++o) mx = fmaxf(mx, lr_[o]);
        float se = 0.f;
        for (int64_t o = 0; o < O; ++o) se += expf(lr_[o] - mx);
        total += mx + logf(se) - lr_[yg[b]];
        for (int64_t o = 0; o < O; ++o) gl[o] = (expf(lr_[o] - mx) / se - (o == yg[b] ? 1.f : 0.f)) * invB;
      }
    }
    loss[g] = (float)(total / (double)B);
    if (!finite_bits(total)) {  // not updated; the caller freezes the model
      loss[g] = NAN;
      continue;
    }

    // ---- backward
    float* gwout = grad + G * P->off_wout + g * P->W[D] * O;
    float* gbout = grad + G * P->off_bout + g * O;
    gemm(nd, O, B, h[dg], 1, nd, glog.data(), O, gwout, O, false);  // h^T @ glog
    for (int64_t o = 0; o < O; ++o) {
      float s = 0.f;
      for (int64_t b = 0; b < B; ++b) s += glog[b * O + o];
      gbout[o] = s;
    }
    for (int64_t l = 1; l < dg; ++l) memset(gh[l], 0, sizeof(float) * B * rw[l]);
    transpose(nd, O, wout, O, wt.data());  // (O, nd)
    gemm(B, nd, O, glog.data(), O, 1, wt.data(), nd, gh[dg], nd, false);
    for (int64_t l = dg; l >= 1; --l) {
      const int64_t n = rw[l], Wl = P->W[l];
      const Block p = layer_block(l);
      const float* s = st[l];
      float* gg = norm ? vec(grad, P->off_g[l], l) : nullptr;
      float* gb = norm ? vec(grad, P->off_n[l], l) : nullptr;
      dispatch(norm, act, keep, [&]<int N, int A, bool K>() {
        block_backward<N, A, K>(p, gh[l], n, z[l], stores_slope(A) ? d[l] : nullptr, s, s + n, s, s + B, gz.data(),
                                vec(grad, P->off_b[l], l), gg, gb, scratch.data());
      });
      const float* wl = wslab(flat, l);
      float* gwl = wslab(grad, l);
      for (int64_t j = 0; j < P->nblk[l]; ++j) {
        if (!(used[l] >> j & 1)) continue;
        const int64_t src = P->blk_src[l][j], row = P->blk_row[l][j], ns = rw[src];
        int64_t ld;
        const float* a = src_of(src, ld);
        gemm(ns, n, B, a, 1, ld, gz.data(), n, gwl + row * Wl, Wl, false);  // h_src^T @ gz
        if (src == 0) continue;
        transpose(ns, n, wl + row * Wl, Wl, wt.data());  // (n, ns)
        gemm(B, ns, n, gz.data(), n, 1, wt.data(), ns, gh[src], ns, true);  // gh_src += gz @ W_block^T
      }
    }

    // ---- a non-finite gradient (NaN inputs or weights that a relu hid from the loss): report, do not update
    if (!finite_grads(grad, P->seg + 2 * P->seg_ptr[g], P->seg_ptr[g + 1] - P->seg_ptr[g])) {
      loss[g] = NAN;
      continue;
    }

    // ---- AdamW on the model's real entries (torch.optim.AdamW's rule, decoupled decay)
    const float lr_scale = S->lr[g] * scale, decay = S->decay[g];
    for (int64_t i = P->seg_ptr[g]; i < P->seg_ptr[g + 1]; ++i) {
      const int64_t off = P->seg[2 * i], len = P->seg[2 * i + 1];
      float *__restrict pp = flat + off, *__restrict m = S->exp_avg + off, *__restrict v = S->exp_avg_sq + off;
      const float* __restrict gr = grad + off;
#pragma omp simd
      for (int64_t k = 0; k < len; ++k) {
        const float gk = gr[k];
        m[k] = m[k] + 0.1f * (gk - m[k]);
        v[k] = v[k] * 0.999f + 0.001f * gk * gk;
        pp[k] = pp[k] * decay + lr_scale * (m[k] / (sqrtf(v[k]) + eps_term));
      }
    }
  }
}

}  // extern "C"
