// Small register-blocked matrix products for the per-model kernels of tiny MLPs (group_step.cpp, and the
// saliency passes of hubedit/graph/kernels/saliency.cpp): each output tile's accumulators stay in
// registers for the whole reduction, so no loop reads and writes the same memory over and over.
#pragma once
#include <stdint.h>
#include <string.h>

#include <algorithm>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));

// unaligned vector load / store (compiles to vmovups)
template <typename V>
inline V load(const float* p) {
  V v;
  memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void store(float* p, V v) {
  memcpy(p, &v, sizeof(V));
}

// C (R rows x NV vectors of V) = (acc ? C : 0) + A (R x K; element (r, k) at A[r * a_rs + k * a_cs]) @ Bm
// (K x NV*lanes, row stride ldb): the accumulators stay in registers for the whole K loop.
template <typename V, int R, int NV>
inline void gemm_tile(int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* Bm, int64_t ldb, float* C,
                      int64_t ldc, bool acc) {
  constexpr int L = sizeof(V) / sizeof(float);
  V c[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = acc ? load<V>(C + r * ldc + v * L) : V{};
  for (int64_t k = 0; k < K; ++k) {
    const float* b = Bm + k * ldb;
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load<V>(b + v * L);
    for (int r = 0; r < R; ++r) {
      const float a = A[r * a_rs + k * a_cs];
      for (int v = 0; v < NV; ++v) c[r][v] += a * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store<V>(C + r * ldc + v * L, c[r][v]);
}

template <int R>
inline void gemm_scalar(int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* Bm, int64_t ldb,
                        float* C, int64_t ldc, bool acc, int64_t N) {
  for (int r = 0; r < R; ++r)
    for (int64_t n = 0; n < N; ++n) {
      float s = acc ? C[r * ldc + n] : 0.f;
      for (int64_t k = 0; k < K; ++k) s += A[r * a_rs + k * a_cs] * Bm[k * ldb + n];
      C[r * ldc + n] = s;
    }
}

// Rows m0 .. m0 + R of C, every column: 64 / 32 / 16 / 8 wide tiles, then single columns.
template <int R>
inline void gemm_rows(int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* Bm, int64_t ldb,
                      float* C, int64_t ldc, bool acc) {
  int64_t n = 0;
  for (; n + 64 <= N; n += 64) gemm_tile<v16, R, 4>(K, A, a_rs, a_cs, Bm + n, ldb, C + n, ldc, acc);
  if (n + 32 <= N) gemm_tile<v16, R, 2>(K, A, a_rs, a_cs, Bm + n, ldb, C + n, ldc, acc), n += 32;
  if (n + 16 <= N) gemm_tile<v16, R, 1>(K, A, a_rs, a_cs, Bm + n, ldb, C + n, ldc, acc), n += 16;
  if (n + 8 <= N) gemm_tile<v8, R, 1>(K, A, a_rs, a_cs, Bm + n, ldb, C + n, ldc, acc), n += 8;
  if (n < N) gemm_scalar<R>(K, A, a_rs, a_cs, Bm + n, ldb, C + n, ldc, acc, N - n);
}

// C (M x N, row stride ldc) = (acc ? C : 0) + A (M x K, element (m, k) at A[m * a_rs + k * a_cs]) @ Bm
// (K x N, row stride ldb). Row-major; sizes of tiny MLPs (N, K up to a few hundred).
inline void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* Bm, int64_t ldb,
          float* C, int64_t ldc, bool acc) {
  constexpr int64_t KC = 64;  // long reductions (weight gradients over the batch) in slices that stay in L1
  if (K > KC) {
    for (int64_t k0 = 0; k0 < K; k0 += KC)
      gemm(M, N, std::min(KC, K - k0), A + k0 * a_cs, a_rs, a_cs, Bm + k0 * ldb, ldb, C, ldc, acc || k0 > 0);
    return;
  }
  int64_t m = 0;
  if (N >= 32) {
    for (; m + 4 <= M; m += 4) gemm_rows<4>(N, K, A + m * a_rs, a_rs, a_cs, Bm, ldb, C + m * ldc, ldc, acc);
  } else {  // narrow outputs: more rows per tile keep the FMA units busy
    for (; m + 8 <= M; m += 8) gemm_rows<8>(N, K, A + m * a_rs, a_rs, a_cs, Bm, ldb, C + m * ldc, ldc, acc);
  }
  for (; m < M; ++m) gemm_rows<1>(N, K, A + m * a_rs, a_rs, a_cs, Bm, ldb, C + m * ldc, ldc, acc);
}

}  // namespace
