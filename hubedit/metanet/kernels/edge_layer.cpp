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
};

// R edges starting at edge i; fwd / bwd: this thread's sums
template <int K, int R, int ACT, bool HEAD>
inline void tile(const Args& a, int64_t i, float* fwd, float* bwd) {
  constexpr int NV = K / 16, NC = 3 * NV;
  const int64_t* src = a.src + i;
  const int64_t* dst = a.dst + i;
  float* e = a.e + i * K;
  v16 c[R][NC];
  for (int r = 0; r < R; ++r) {
    const float* pf = a.p_f + src[r] * K;
    const float* ps = a.p_s + src[r] * K;
    const float* pb = a.p_b + dst[r] * K;
    const float* pd = a.p_d + dst[r] * K;
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

}  // namespace

extern "C" {

// Returns 0, or -1 for an unsupported width K (the caller then uses its torch path).
int hubedit_edge_layer_forward(int64_t n_edges, int64_t n_nodes, int64_t width, int64_t act, const int64_t* src,
                               const int64_t* dst, float* e, const float* p_f, const float* p_s, const float* p_d,
                               const float* p_b, const float* w_cat, const float* w_o, float* fwd, float* bwd,
                               const float* head_vec, float* head_acc, int64_t threads) {
  const Args a{n_nodes, src, dst, e, p_f, p_s, p_d, p_b, w_cat, w_o, head_vec, head_acc};
  switch (width) {
    case 16: dispatch<16>(a, n_edges, act, fwd, bwd, threads); return 0;
    case 32: dispatch<32>(a, n_edges, act, fwd, bwd, threads); return 0;
    case 64: dispatch<64>(a, n_edges, act, fwd, bwd, threads); return 0;
    default: return -1;
  }
}

}  // extern "C"
