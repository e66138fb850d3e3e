// The per-edge work of one message-passing layer of the graph metanetwork, at inference
// (hubedit/metanet/edge_kernel.py builds and loads this file; BidirectionalLayer.forward_fused calls it).
//
// For every edge (s -> d) with representation e (K floats), node terms p_f, p_s, p_d, p_b (K floats per
// node, biases included) and the edge-part weights applied on the right (K x K each):
//   z_f = act(p_f[s] + e w_f)            summed at d into fwd
//   z_b = act(p_b[d] + e w_b)            summed at s into bwd
//   z_e = act(p_s[s] + p_d[d] + e w_e)
//   e  <- e + z_e w_o                    (in place)
//   head_acc[edge] += e . head_vec       (optional: the residual edit head)
// which is what the chunked torch loop of forward_fused computes, in about ten kernel calls per chunk and
// with every E x K temporary streamed through memory. Here a tile of R edges is done in registers: the three
// first maps as one (R x K) @ (K x 3K) product into accumulators that start at the gathered node terms
// (w_cat = [w_f | w_b | w_e], row-major K x 3K), then the activation, the two scatter-adds and the output map.
// act: 0 relu, 1 leaky relu (slope 0.01). K: 16, 32 or 64. With threads > 1 the edges are split into
// contiguous ranges; each thread sums into its own fwd / bwd and the sums are added at the end (the result
// then differs from one thread's by float rounding only).
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <thread>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64)));

inline v16 load(const float* p) {
  v16 v;
  memcpy(&v, p, sizeof(v16));
  return v;
}
inline void store(float* p, v16 v) { memcpy(p, &v, sizeof(v16)); }

template <int ACT>
inline v16 act(v16 z) {
  const v16 zero{};
  if constexpr (ACT == 0) return z > zero ? z : zero;
  return z > zero ? z : z * 0.01f;
}

struct Args {
  int64_t n_nodes;
  const int64_t* src;
  const int64_t* dst;
  float* e;
  const float *p_f, *p_s, *p_d, *p_b, *w_cat, *w_o, *head_vec;
  float* head_acc;
  int64_t node_stride;  // row stride of the node terms (K, or 4K where they are column blocks of one matrix)
};

// The pre-activations of R edges from edge i: [z_f | z_b | z_e] = gathered node terms + e @ w_cat, one
// R x 3K product kept in registers (c[r][v]: edge r, vector v of 16 columns).
template <int K, int R>
inline __attribute__((always_inline)) void first_maps(const Args& a, int64_t i, v16 (&c)[R][3 * K / 16]) {
  constexpr int NV = K / 16, NC = 3 * NV;
  const int64_t* src = a.src + i;
  const int64_t* dst = a.dst + i;
  const float* e = a.e + i * K;
  for (int r = 0; r < R; ++r) {
    const float* pf = a.p_f + src[r] * a.node_stride;
    const float* ps = a.p_s + src[r] * a.node_stride;
    const float* pb = a.p_b + dst[r] * a.node_stride;
    const float* pd = a.p_d + dst[r] * a.node_stride;
    for (int v = 0; v < NV; ++v) {
      c[r][v] = load(pf + 16 * v);
      c[r][NV + v] = load(pb + 16 * v);
      c[r][2 * NV + v] = load(ps + 16 * v) + load(pd + 16 * v);
    }
  }
  for (int k = 0; k < K; ++k) {
    const float* w = a.w_cat + k * 3 * K;
    v16 b[NC];
    for (int v = 0; v < NC; ++v) b[v] = load(w + 16 * v);
    for (int r = 0; r < R; ++r) {
      const float x = e[r * K + k];
      for (int v = 0; v < NC; ++v) c[r][v] += x * b[v];
    }
  }
}

// R edges starting at edge i; fwd / bwd: this thread's sums
template <int K, int R, int ACT, bool HEAD>
inline void tile(const Args& a, int64_t i, float* fwd, float* bwd) {
  constexpr int NV = K / 16, NC = 3 * NV;
  const int64_t* src = a.src + i;
  const int64_t* dst = a.dst + i;
  float* e = a.e + i * K;
  v16 c[R][NC];
  first_maps<K, R>(a, i, c);
  alignas(64) float z_e[R][K];
  for (int r = 0; r < R; ++r) {
    float* f = fwd + dst[r] * K;
    float* g = bwd + src[r] * K;
    for (int v = 0; v < NV; ++v) {
      store(f + 16 * v, load(f + 16 * v) + act<ACT>(c[r][v]));
      store(g + 16 * v, load(g + 16 * v) + act<ACT>(c[r][NV + v]));
      store(&z_e[r][16 * v], act<ACT>(c[r][2 * NV + v]));
    }
  }
  v16 o[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) o[r][v] = load(e + r * K + 16 * v);
  for (int k = 0; k < K; ++k) {
    const float* w = a.w_o + k * K;
    v16 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(w + 16 * v);
    for (int r = 0; r < R; ++r) {
      const float x = z_e[r][k];
      for (int v = 0; v < NV; ++v) o[r][v] += x * b[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    v16 h{};
    for (int v = 0; v < NV; ++v) {
      store(e + r * K + 16 * v, o[r][v]);
      if constexpr (HEAD) h += o[r][v] * load(a.head_vec + 16 * v);
    }
    if constexpr (HEAD) {
      float s = 0.f;
      for (int l = 0; l < 16; ++l) s += h[l];
      a.head_acc[i + r] += s;
    }
  }
}

// tiles of R = 24 / (3 K / 16) edges: the accumulators fill most of the 32 vector registers
template <int K, int ACT, bool HEAD>
void edges(const Args& a, int64_t begin, int64_t end, float* fwd, float* bwd) {
  constexpr int R = std::max(1, 24 / (3 * K / 16));
  int64_t i = begin;
  for (; i + R <= end; i += R) tile<K, R, ACT, HEAD>(a, i, fwd, bwd);
  for (; i < end; ++i) tile<K, 1, ACT, HEAD>(a, i, fwd, bwd);
}

template <int K, int ACT, bool HEAD>
void run(const Args& a, int64_t n_edges, float* fwd, float* bwd, int64_t threads) {
  // below ~8k edges per thread, starting a thread costs more than it saves
  threads = std::max<int64_t>(1, std::min<int64_t>(threads, n_edges / 8192));
  if (threads == 1) return edges<K, ACT, HEAD>(a, 0, n_edges, fwd, bwd);
  const int64_t size = a.n_nodes * K;
  std::vector<float> sums(static_cast<size_t>((threads - 1) * 2 * size), 0.f);
  const int64_t per = (n_edges + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t b = t * per, en = std::min(n_edges, b + per);
    float* f = sums.data() + (t - 1) * 2 * size;
    pool.emplace_back([&a, b, en, f, size] { edges<K, ACT, HEAD>(a, b, en, f, f + size); });
  }
  edges<K, ACT, HEAD>(a, 0, std::min(n_edges, per), fwd, bwd);
  for (auto& th : pool) th.join();
  for (int64_t t = 1; t < threads; ++t) {
    const float* f = sums.data() + (t - 1) * 2 * size;
#pragma omp simd
    for (int64_t j = 0; j < size; ++j) fwd[j] += f[j];
#pragma omp simd
    for (int64_t j = 0; j < size; ++j) bwd[j] += f[size + j];
  }
}

template <int K>
void dispatch(const Args& a, int64_t n_edges, int64_t act, float* fwd, float* bwd, int64_t threads) {
  const bool head = a.head_acc != nullptr;
  if (act == 0)
    head ? run<K, 0, true>(a, n_edges, fwd, bwd, threads) : run<K, 0, false>(a, n_edges, fwd, bwd, threads);
  else
    head ? run<K, 1, true>(a, n_edges, fwd, bwd, threads) : run<K, 1, false>(a, n_edges, fwd, bwd, threads);
}


// ---- backward (training) ----------------------------------------------------------------------------------
// Gradients of (e_new, fwd, bwd) = forward(e, p_f, p_s, p_d, p_b, w_f, w_e, w_b, w_o) (no head), as
// hubedit/metanet/edge_pass.py's EdgePass.backward: a tile recomputes its pre-activations (the forward
// product), then forms every gradient of the tile at once.

struct Grads {
  const float* g_new;   // E x K (null: zero)
  const float* g_fwd;   // N x K (null: zero)
  const float* g_bwd;   // N x K (null: zero)
  const float* w_cat_t; // 3K x K: w_cat transposed
  const float* w_o_t;   // K x K: w_o transposed
  float* g_e;           // E x K, written
};

// this thread's sums: g_pf, g_ps, g_pd, g_pb (N x K each), g_wcat (K x 3K), g_wo (K x K)
struct Sums {
  float *g_pf, *g_ps, *g_pd, *g_pb, *g_wcat, *g_wo;
};

template <int ACT>
inline v16 slope(v16 z, v16 g) {  // g * act'(pre-activation z)
  const v16 zero{};
  if constexpr (ACT == 0) return z > zero ? g : zero;
  return z > zero ? g : g * 0.01f;
}

template <int K, int R, int ACT>
inline void tile_backward(const Args& a, const Grads& gr, const Sums& out, int64_t i) {
  constexpr int NV = K / 16, NC = 3 * NV;
  const int64_t* src = a.src + i;
  const int64_t* dst = a.dst + i;
  const float* e = a.e + i * K;
  v16 c[R][NC];
  first_maps<K, R>(a, i, c);
  // dz = [dz_f | dz_b | dz_e] (R x 3K), z_e = act(pre-activation) (R x K), g_new (R x K)
  alignas(64) float dz[R][3 * K];
  alignas(64) float z_e[R][K];
  alignas(64) float gn[R][K];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) {
      const v16 g_f = gr.g_fwd ? load(gr.g_fwd + dst[r] * K + 16 * v) : v16{};
      const v16 g_b = gr.g_bwd ? load(gr.g_bwd + src[r] * K + 16 * v) : v16{};
      store(&dz[r][16 * v], slope<ACT>(c[r][v], g_f));
      store(&dz[r][K + 16 * v], slope<ACT>(c[r][NV + v], g_b));
      store(&z_e[r][16 * v], act<ACT>(c[r][2 * NV + v]));
      store(&gn[r][16 * v], gr.g_new ? load(gr.g_new + (i + r) * K + 16 * v) : v16{});
    }
  }
  // dz_e = act'(z_e) * (g_new @ w_o^T)
  {
    v16 o[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) o[r][v] = v16{};
    for (int k = 0; k < K; ++k) {
      const float* w = gr.w_o_t + k * K;
      v16 b[NV];
      for (int v = 0; v < NV; ++v) b[v] = load(w + 16 * v);
      for (int r = 0; r < R; ++r) {
        const float x = gn[r][k];
        for (int v = 0; v < NV; ++v) o[r][v] += x * b[v];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) store(&dz[r][2 * K + 16 * v], slope<ACT>(c[r][2 * NV + v], o[r][v]));
  }
  // g_e = g_new + dz @ w_cat^T
  {
    v16 o[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) o[r][v] = load(&gn[r][16 * v]);
    for (int k = 0; k < 3 * K; ++k) {
      const float* w = gr.w_cat_t + k * K;
      v16 b[NV];
      for (int v = 0; v < NV; ++v) b[v] = load(w + 16 * v);
      for (int r = 0; r < R; ++r) {
        const float x = dz[r][k];
        for (int v = 0; v < NV; ++v) o[r][v] += x * b[v];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) store(gr.g_e + (i + r) * K + 16 * v, o[r][v]);
  }
  // weight gradients: g_wcat += e^T @ dz, g_wo += z_e^T @ g_new
  for (int k = 0; k < K; ++k) {
    float* gw = out.g_wcat + k * 3 * K;
    for (int v = 0; v < NC; ++v) {
      v16 acc = load(gw + 16 * v);
      for (int r = 0; r < R; ++r) acc += e[r * K + k] * load(&dz[r][16 * v]);
      store(gw + 16 * v, acc);
    }
    float* go = out.g_wo + k * K;
    for (int v = 0; v < NV; ++v) {
      v16 acc = load(go + 16 * v);
      for (int r = 0; r < R; ++r) acc += z_e[r][k] * load(&gn[r][16 * v]);
      store(go + 16 * v, acc);
    }
  }
  // node-term gradients (scatter-adds)
  for (int r = 0; r < R; ++r) {
    float* gf = out.g_pf + src[r] * K;
    float* gs = out.g_ps + src[r] * K;
    float* gb = out.g_pb + dst[r] * K;
    float* gd = out.g_pd + dst[r] * K;
    for (int v = 0; v < NV; ++v) {
      const v16 de = load(&dz[r][2 * K + 16 * v]);
      store(gf + 16 * v, load(gf + 16 * v) + load(&dz[r][16 * v]));
      store(gb + 16 * v, load(gb + 16 * v) + load(&dz[r][K + 16 * v]));
      store(gs + 16 * v, load(gs + 16 * v) + de);
      store(gd + 16 * v, load(gd + 16 * v) + de);
    }
  }
}

template <int K, int ACT>
void edges_backward(const Args& a, const Grads& gr, const Sums& out, int64_t begin, int64_t end) {
  constexpr int R = std::max(1, 24 / (3 * K / 16));
  int64_t i = begin;
  for (; i + R <= end; i += R) tile_backward<K, R, ACT>(a, gr, out, i);
  for (; i < end; ++i) tile_backward<K, 1, ACT>(a, gr, out, i);
}

template <int K, int ACT>
void run_backward(const Args& a, const Grads& gr, const Sums& out, int64_t n_edges, int64_t threads) {
  threads = std::max<int64_t>(1, std::min<int64_t>(threads, n_edges / 8192));
  if (threads == 1) return edges_backward<K, ACT>(a, gr, out, 0, n_edges);
  const int64_t node = a.n_nodes * K, per_thread = 4 * node + 4 * K * K;
  std::vector<float> sums(static_cast<size_t>((threads - 1) * per_thread), 0.f);
  const int64_t per = (n_edges + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    float* f = sums.data() + (t - 1) * per_thread;
    const Sums mine{f, f + node, f + 2 * node, f + 3 * node, f + 4 * node, f + 4 * node + 3 * K * K};
    const int64_t b = t * per, en = std::min(n_edges, b + per);
    pool.emplace_back([&a, &gr, mine, b, en] { edges_backward<K, ACT>(a, gr, mine, b, en); });
  }
  edges_backward<K, ACT>(a, gr, out, 0, std::min(n_edges, per));
  for (auto& th : pool) th.join();
  float* dst_of[6] = {out.g_pf, out.g_ps, out.g_pd, out.g_pb, out.g_wcat, out.g_wo};
  const int64_t off[6] = {0, node, 2 * node, 3 * node, 4 * node, 4 * node + 3 * K * K};
  const int64_t len[6] = {node, node, node, node, 3 * K * K, K * K};
  for (int64_t t = 1; t < threads; ++t) {
    const float* f = sums.data() + (t - 1) * per_thread;
    for (int j = 0; j < 6; ++j) {
      float* d = dst_of[j];
      const float* s = f + off[j];
#pragma omp simd
      for (int64_t x = 0; x < len[j]; ++x) d[x] += s[x];
    }
  }
}

template <int K>
void dispatch_backward(const Args& a, const Grads& gr, const Sums& out, int64_t n_edges, int64_t act, int64_t threads) {
  if (act == 0)
    run_backward<K, 0>(a, gr, out, n_edges, threads);
  else
    run_backward<K, 1>(a, gr, out, n_edges, threads);
}

}  // namespace

extern "C" {

// Returns 0; -1 for an unsupported width K; -2 where the per-thread sums could not be allocated or a thread
// not started (the caller raises).
int hubedit_edge_layer_forward(int64_t n_edges, int64_t n_nodes, int64_t width, int64_t act, const int64_t* src,
                               const int64_t* dst, float* e, const float* p_f, const float* p_s, const float* p_d,
                               const float* p_b, const float* w_cat, const float* w_o, float* fwd, float* bwd,
                               const float* head_vec, float* head_acc, int64_t node_stride, int64_t threads) {
  const Args a{n_nodes, src, dst, e, p_f, p_s, p_d, p_b, w_cat, w_o, head_vec, head_acc, node_stride};
  try {  // no C++ exception may cross into the caller (ctypes): per-thread sums or threads that fail -> -2
    switch (width) {
      case 16: dispatch<16>(a, n_edges, act, fwd, bwd, threads); return 0;
      case 32: dispatch<32>(a, n_edges, act, fwd, bwd, threads); return 0;
      case 64: dispatch<64>(a, n_edges, act, fwd, bwd, threads); return 0;
      default: return -1;
    }
  } catch (...) {
    return -2;
  }
}

// The gradients of hubedit_edge_layer_forward (without the head) for training; e is not modified. g_new,
// g_fwd, g_bwd may be null (zero). g_e is written; g_pf .. g_pb (N x K), g_wcat (K x 3K, columns as w_cat)
// and g_wo (K x K) must be zeroed by the caller. w_cat_t (3K x K) and w_o_t (K x K) are the transposes.
int hubedit_edge_layer_backward(int64_t n_edges, int64_t n_nodes, int64_t width, int64_t act, const int64_t* src,
                                const int64_t* dst, const float* e, const float* p_f, const float* p_s,
                                const float* p_d, const float* p_b, const float* w_cat, const float* w_cat_t,
                                const float* w_o_t, const float* g_new, const float* g_fwd, const float* g_bwd,
                                float* g_e, float* g_pf, float* g_ps, float* g_pd, float* g_pb, float* g_wcat,
                                float* g_wo, int64_t threads) {
  const Args a{n_nodes, src, dst, const_cast<float*>(e), p_f, p_s, p_d, p_b, w_cat, nullptr, nullptr, nullptr, width};
  const Grads gr{g_new, g_fwd, g_bwd, w_cat_t, w_o_t, g_e};
  const Sums out{g_pf, g_ps, g_pd, g_pb, g_wcat, g_wo};
  try {
    switch (width) {
      case 16: dispatch_backward<16>(a, gr, out, n_edges, act, threads); return 0;
      case 32: dispatch_backward<32>(a, gr, out, n_edges, act, threads); return 0;
      case 64: dispatch_backward<64>(a, gr, out, n_edges, act, threads); return 0;
      default: return -1;
    }
  } catch (...) {
    return -2;
  }
}

}  // extern "C"
