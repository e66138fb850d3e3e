// The layer-wise refit of edited models (hubedit/graph/refit.py's refit_variants, its torch formulation and
// reference to float rounding), one model at a time: for every block, the kept weights and the bias of each
// neuron are the ridge least-squares fit of the original model's pre-activation of that neuron on x, from the
// edited model's own activations of the layers below, pulled towards the edited values:
//
//   minimise over the kept entries  |X w - t|^2 / B + alpha |w - w_edit|^2,   X = [inputs, 1],
//   alpha = ridge * mean diagonal of X^T X / B,
//
// solved in float64 on the kept entries only (a pruned weight decouples and comes out exactly 0), by a
// Cholesky factorisation. Each variant either keeps the given mask or, with `reselect`, re-chooses in every
// block as many weights as the given mask keeps there by |original weight| * |input column|_2 (Wanda, ties by
// position). Models' layout and plans: mlp_plan.h.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "mlp_plan.h"

namespace {

// Solve the SPD system a x = b in place (a: n x n row-major, overwritten by its Cholesky factor; b -> x).
// Returns false where a is not positive definite (to rounding).
bool cholesky_solve(double* a, double* b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (int64_t k = 0; k < j; ++k) d -= a[j * n + k] * a[j * n + k];
    if (!(d > 0.0)) return false;
    d = sqrt(d);
    a[j * n + j] = d;
    for (int64_t i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (int64_t k = 0; k < j; ++k) s -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = s / d;
    }
  }
  for (int64_t i = 0; i < n; ++i) {  // L y = b
    double s = b[i];
    for (int64_t k = 0; k < i; ++k) s -= a[i * n + k] * b[k];
    b[i] = s / a[i * n + i];
  }
  for (int64_t i = n - 1; i >= 0; --i) {  // L^T x = y
    double s = b[i];
    for (int64_t k = i + 1; k < n; ++k) s -= a[k * n + i] * b[k];
    b[i] = s / a[i * n + i];
  }
  return true;
}

// mean over B rows of JSD(softmax(a_b), softmax(b_b)) in log space, each clamped to [0, ln 2]
// (hubedit.metrics.scores.jsd_from_logits)
double mean_jsd(const float* a, const float* b, int64_t B, int64_t C) {
  const double ln2 = 0.69314718055994530942;
  std::vector<double> la(C), lb(C);
  double total = 0.0;
  for (int64_t r = 0; r < B; ++r) {
    auto log_softmax = [&](const float* z, std::vector<double>& out) {
      double mx = z[0];
      for (int64_t c = 1; c < C; ++c) mx = std::max(mx, (double)z[c]);
      double se = 0.0;
      for (int64_t c = 0; c < C; ++c) se += exp((double)z[c] - mx);
      for (int64_t c = 0; c < C; ++c) out[c] = (double)z[c] - mx - log(se);
    };
    log_softmax(a + r * C, la);
    log_softmax(b + r * C, lb);
    double j = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double hi = std::max(la[c], lb[c]), lo = std::min(la[c], lb[c]);
      const double lm = hi + log1p(exp(lo - hi)) - ln2;
      j += exp(la[c]) * (la[c] - lm) + exp(lb[c]) * (lb[c] - lm);
    }
    total += std::min(std::max(0.5 * j, 0.0), ln2);
  }
  return total / (double)B;
}

struct Refitter {
  const ModelPlan& plan;
  const float* x;
  int64_t B, F;
  float eps;
  double ridge;
  std::vector<int64_t> width;
  std::vector<std::vector<float>> acts;  // (B, width[l]) per layer, l >= 1
  std::vector<std::vector<float>> targets;  // original pre-activations per block (B, rows)
  std::vector<float> inp, wt, score, colnorm;
  std::vector<double> gram, xt, sys, rhs, xdt, tdt;
  std::vector<int64_t> kept, order;

  Refitter(const ModelPlan& p, const float* x_, int64_t B_, int64_t F_, float eps_, double ridge_)
      : plan(p), x(x_), B(B_), F(F_), eps(eps_), ridge(ridge_) {
    const size_t L = p.blocks.size() + 1;
    width.assign(L, F);
    int64_t kmax = 0, wmax = 0, rmax = 0;
    for (size_t i = 0; i < p.blocks.size(); ++i) {
      width[i + 1] = p.blocks[i].rows;
      kmax = std::max(kmax, p.blocks[i].cols + 1);
      rmax = std::max(rmax, p.blocks[i].rows);
      wmax = std::max(wmax, p.blocks[i].rows * p.blocks[i].cols);
    }
    acts.resize(L), targets.resize(L);
    for (size_t l = 1; l < L; ++l) acts[l].resize(B * width[l]), targets[l].resize(B * width[l]);
    inp.resize(B * kmax), wt.resize(wmax), score.resize(wmax), colnorm.resize(kmax);
    gram.resize(kmax * kmax), xt.resize(kmax * rmax), sys.resize(kmax * kmax), rhs.resize(kmax);
    xdt.resize(kmax * B), tdt.resize(rmax * B);
  }

  // the block's input columns side by side, from acts (x for layer 0), into inp (B, cols)
  void gather(const BlockPlan& bp) {
    for (const Part& pt : bp.parts) {
      const int64_t nc = pt.c1 - pt.c0, ws = width[pt.src];
      const float* a = pt.src == 0 ? x : acts[pt.src].data();
      for (int64_t b = 0; b < B; ++b) memcpy(inp.data() + b * bp.cols + pt.c0, a + b * ws, sizeof(float) * nc);
    }
  }

  // z (B, rows) = bias + inp @ w^T for the block's row-major weights w, then the hidden layer's norm and
  // activation with the layer's node values nd (into acts[l]); keeps z in `pre_norm` when given
  void forward_block(int64_t i, const float* w, const float* bias, const float* nd, float* pre_norm) {
    const BlockPlan& bp = plan.blocks[i];
    const int64_t rows = bp.rows, cols = bp.cols, l = i + 1;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) wt[c * rows + r] = w[r * cols + c];
    float* z = acts[l].data();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t r = 0; r < rows; ++r) z[b * rows + r] = bias[r];
    gemm(B, rows, cols, inp.data(), cols, 1, wt.data(), rows, z, rows, true);
    if (pre_norm) memcpy(pre_norm, z, sizeof(float) * B * rows);
    if (l <= plan.depth)
      dispatch_kinds(plan.norm, plan.act, [&]<int N, int A>() { norm_act<N, A>(B, rows, nd, eps, z, nullptr, nullptr, nullptr); });
  }

  // the original model's pre-activations of every block (targets) and its logits
  void original(const float* ow, const float* onodes, float* logits) {
    std::vector<float> bias;
    for (size_t i = 0; i < plan.blocks.size(); ++i) {
      const BlockPlan& bp = plan.blocks[i];
      const float* nd = onodes + bp.node * kNodeFeatures;
      bias.resize(bp.rows);
      for (int64_t r = 0; r < bp.rows; ++r) bias[r] = nd[r * kNodeFeatures + kBias];
      gather(bp);
      forward_block((int64_t)i, ow + bp.start, bias.data(), nd, targets[i + 1].data());
    }
    const int64_t out = (int64_t)plan.blocks.size();
    memcpy(logits, acts[out].data(), sizeof(float) * B * width[out]);
  }

  // one variant: refit weights into new_w (model's edges), biases into new_b (model's nodes), the mask met into
  // new_keep, logits (B, C). Returns false where a system is not positive definite.
  bool variant(const float* ow, const float* ew, const float* enodes, const float* keep, bool reselect, float* new_w,
               float* new_b, float* new_keep, float* logits) {
    for (size_t i = 0; i < plan.blocks.size(); ++i) {
      const BlockPlan& bp = plan.blocks[i];
      const int64_t rows = bp.rows, cols = bp.cols, K = cols + 1;
      gather(bp);
      const float* kb = keep + bp.start;
      float* mb = new_keep + bp.start;
      if (reselect) {  // Wanda: |w_orig| * |input column|_2, as many as the given mask keeps in this block
        for (int64_t c = 0; c < cols; ++c) colnorm[c] = 0.f;
        for (int64_t b = 0; b < B; ++b)
          for (int64_t c = 0; c < cols; ++c) colnorm[c] += inp[b * cols + c] * inp[b * cols + c];
        double count = 0.0;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            score[r * cols + c] = fabsf(ow[bp.start + r * cols + c]) * sqrtf(colnorm[c]);
            count += kb[r * cols + c];
          }
        top_k_mask(score.data(), rows * cols, (int64_t)nearbyint(count), mb, order);
      } else {
        memcpy(mb, kb, sizeof(float) * rows * cols);
      }
      // X^T X / B and X^T t / B in float64 (X = [inp, 1]): contiguous dot products of X's and t's columns
      double* xc = xdt.data();  // (K, B): X's columns
      double* tc = tdt.data();  // (rows, B): t's columns
      const float* t = targets[i + 1].data();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = 0; c < cols; ++c) xc[c * B + b] = (double)inp[b * cols + c];
        for (int64_t r = 0; r < rows; ++r) tc[r * B + b] = (double)t[b * rows + r];
      }
      for (int64_t b = 0; b < B; ++b) xc[cols * B + b] = 1.0;
      for (int64_t p = 0; p < K; ++p) {
        const double* __restrict xp = xc + p * B;
        for (int64_t q = p; q < K; ++q) {
          const double* __restrict xq = xc + q * B;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int64_t b = 0; b < B; ++b) s += xp[b] * xq[b];
          gram[p * K + q] = gram[q * K + p] = s;
        }
        for (int64_t r = 0; r < rows; ++r) {
          const double* __restrict tr = tc + r * B;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int64_t b = 0; b < B; ++b) s += xp[b] * tr[b];
          xt[p * rows + r] = s;
        }
      }
      double diag = 0.0;
      for (int64_t p = 0; p < K * K; ++p) gram[p] /= (double)B;
      for (int64_t p = 0; p < K * rows; ++p) xt[p] /= (double)B;
      for (int64_t p = 0; p < K; ++p) diag += gram[p * K + p];
      const double alpha = std::max(ridge * diag / (double)K, ridge * 1e-12);
      const float* nd = enodes + bp.node * kNodeFeatures;
      float* wb = new_w + bp.start;
      for (int64_t r = 0; r < rows; ++r) {
        kept.clear();
        for (int64_t c = 0; c < cols; ++c)
          if (mb[r * cols + c] != 0.f) kept.push_back(c);
        kept.push_back(cols);  // the bias
        const int64_t n = (int64_t)kept.size();
        for (int64_t a = 0; a < n; ++a) {
          for (int64_t b = 0; b < n; ++b) sys[a * n + b] = gram[kept[a] * K + kept[b]];
          sys[a * n + a] += alpha;
          const double anchor = kept[a] < cols ? (double)ew[bp.start + r * cols + kept[a]] : (double)nd[r * kNodeFeatures + kBias];
          rhs[a] = xt[kept[a] * rows + r] + alpha * anchor;
        }
        if (!cholesky_solve(sys.data(), rhs.data(), n)) return false;
        for (int64_t c = 0; c < cols; ++c) wb[r * cols + c] = 0.f;
        for (int64_t a = 0; a + 1 < n; ++a) wb[r * cols + kept[a]] = (float)rhs[a];
        new_b[bp.node + r] = (float)rhs[n - 1];
      }
      forward_block((int64_t)i, wb, new_b + bp.node, nd, nullptr);
    }
    const int64_t out = (int64_t)plan.blocks.size();
    memcpy(logits, acts[out].data(), sizeof(float) * B * width[out]);
    return true;
  }
};

}  // namespace

extern "C" {

// Refit n_models models (plans at plan + plan_off[m]) on x (B, F) once per variant (reselect[v]: re-choose the
// mask), from the original values (orig_ev (E), orig_nv (N, 5)), the edited ones (ev, nv) and the keep mask
// (E, 0/1). Writes per variant v: out_ev (V, E) the refit weights (0 where not kept), out_bias (V, N) the refit
// biases of every non-input node (the caller fills the rest), out_keep (V, E) the mask met, out_logits
// (V, M, B, C), out_jsd (V, M) each refit model's mean JSD to its original on x; and orig_logits (M, B, C).
// Returns 0, 1 where a system was not positive definite, -2 where memory or threads ran out.
int hubedit_refit_variants(int64_t n_models, const int64_t* plan, const int64_t* plan_off, const float* eps,
                           const float* x, int64_t B, int64_t F, const float* orig_ev, const float* orig_nv,
                           const float* ev, const float* nv, const float* keep, double ridge, int64_t n_variants,
                           const uint8_t* reselect, int64_t n_edges, int64_t n_nodes, int64_t C, float* out_ev,
                           float* out_bias, float* out_keep, float* out_logits, float* orig_logits, float* out_jsd,
                           int64_t n_threads) {
  return over_models(n_models, plan, plan_off, n_threads, [&](const ModelPlan& p, int64_t m) {
    Refitter rf(p, x, B, F, eps[m], ridge);
    const int64_t eo = p.edge_off, no = p.node_off * kNodeFeatures;
    rf.original(orig_ev + eo, orig_nv + no, orig_logits + m * B * C);
    for (int64_t v = 0; v < n_variants; ++v) {
      float* logits = out_logits + (v * n_models + m) * B * C;
      if (!rf.variant(orig_ev + eo, ev + eo, nv + no, keep + eo, reselect[v] != 0, out_ev + v * n_edges + eo,
                      out_bias + v * n_nodes + p.node_off, out_keep + v * n_edges + eo, logits))
        return false;
      out_jsd[v * n_models + m] = (float)mean_jsd(orig_logits + m * B * C, logits, B, C);
    }
    return true;
  });
}

}  // extern "C"
