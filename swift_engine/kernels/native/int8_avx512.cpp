// Weight-only int8 products on AVX-512 BF16 (VDPBF16PS) for CPUs without AMX tiles: each weight row
// is read and converted once for all of a pass's rows. (Without AMX int8_vnni.cpp is the default; this
// path keeps bfloat16 inputs: SWIFT_NATIVE_VNNI=0, or an input width that is not a multiple of 64.)
//
// Why: as int4_avx512.cpp -- PyTorch's aten::_weight_int8pack_mm converts every weight again for
// each block of 4 rows; an int4 model's int8 output head would make a verification pass of k rows
// cost about ceil(k/4) one-row heads.
//
// How: out[r][n] = scale[n] * dot(x[r], w[n]). 32 inputs of a weight row become one register of
// exact bfloat16 values (|q| <= 127 needs 7 bits), multiplied by the row's 32 inputs with one
// VDPBF16PS into 16 float32 lanes; the lanes are summed once at the end. Four weight rows are
// multiplied at once by up to FUSED_ROWS rows; passes of more rows convert the four weight rows once
// into a buffer and take the rows FUSED_ROWS at a time.
//
// Bits: an output depends only on its activation row and its weight row: one chain of VDPBF16PS over
// K in order, the same fixed reduction of the 16 lanes, times the scale, rounded to bfloat16 (or
// widened from that rounding, for the float32 head) -- whichever path and however many rows.

#include "tiles.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace swift_kernels {
namespace int8 {
namespace {

constexpr int FUSED_ROWS = 4;  // rows per pass over four weight rows (16 accumulators)
constexpr int QUAD = 4;        // weight rows converted and multiplied together

// 32 int8 weights -> 32 exact bfloat16 values, in input order
inline __m512bh to_bf16_weights(const int8_t* w) {
  const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

inline __m512bh load_pairs(const bf16_t* p) { return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p)); }

// sums[r][o] (r < ROWS, o < 4) = dot(x[r], w[o]) over K; weights from the int8 rows `w` (stride K),
// or where `converted` is given, from it ([4][K] bfloat16)
template <int ROWS, bool CONVERTED>
inline void quad_rows(const bf16_t* x, int K, const int8_t* w, const bf16_t* converted, float* sums, int lds) {
  __m512 acc[FUSED_ROWS][QUAD];
  for (int r = 0; r < ROWS; ++r)
    for (int o = 0; o < QUAD; ++o) acc[r][o] = _mm512_setzero_ps();
  for (int k = 0; k < K; k += 32) {
    __m512bh wv[QUAD];
    for (int o = 0; o < QUAD; ++o)
      if constexpr (CONVERTED) wv[o] = load_pairs(converted + static_cast<int64_t>(o) * K + k);
      else wv[o] = to_bf16_weights(w + static_cast<int64_t>(o) * K + k);
    for (int r = 0; r < ROWS; ++r) {
      const __m512bh xv = load_pairs(x + static_cast<int64_t>(r) * K + k);
      for (int o = 0; o < QUAD; ++o) acc[r][o] = dpbf16(acc[r][o], xv, wv[o]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int o = 0; o < QUAD; ++o) sums[r * lds + o] = _mm512_reduce_add_ps(acc[r][o]);
}

template <bool CONVERTED>
inline void rows_of_quad(int rows, const bf16_t* x, int K, const int8_t* w, const bf16_t* converted, float* sums,
                         int lds) {
  switch (rows) {
    case 1: quad_rows<1, CONVERTED>(x, K, w, converted, sums, lds); break;
    case 2: quad_rows<2, CONVERTED>(x, K, w, converted, sums, lds); break;
    case 3: quad_rows<3, CONVERTED>(x, K, w, converted, sums, lds); break;
    default: quad_rows<4, CONVERTED>(x, K, w, converted, sums, lds); break;
  }
}

template <typename OUT>
void block(const bf16_t* x, int K, int rows, const int8_t* w, const bf16_t* scales, OUT* out, int ldc, int outputs) {
  constexpr int MAX_OUT = 64;
  alignas(64) float sums[AMX_ROWS * MAX_OUT];  // [rows][outputs]
  std::vector<bf16_t> converted;
  if (rows > FUSED_ROWS) converted.resize(static_cast<size_t>(QUAD) * K);
  for (int n = 0; n < outputs; n += QUAD) {
    const int8_t* wq = w + static_cast<int64_t>(n) * K;
    if (rows <= FUSED_ROWS) {
      rows_of_quad<false>(rows, x, K, wq, nullptr, sums + n, MAX_OUT);
      continue;
    }
    for (int o = 0; o < QUAD; ++o)
      for (int k = 0; k < K; k += 32)
        _mm512_storeu_si512(converted.data() + static_cast<int64_t>(o) * K + k,
                            reinterpret_cast<__m512i>(to_bf16_weights(wq + static_cast<int64_t>(o) * K + k)));
    for (int r0 = 0; r0 < rows; r0 += FUSED_ROWS)
      rows_of_quad<true>(std::min(FUSED_ROWS, rows - r0), x + static_cast<int64_t>(r0) * K, K, nullptr, converted.data(),
                   sums + r0 * MAX_OUT + n, MAX_OUT);
  }
  store_scaled(sums, MAX_OUT, rows, outputs, scales, out, ldc);
}

}  // namespace

void avx512_block(const bf16_t* x, int K, int rows, const int8_t* w, const bf16_t* scales, bf16_t* out, int ldc,
                  int outputs) {
  block(x, K, rows, w, scales, out, ldc, outputs);
}

void avx512_block(const bf16_t* x, int K, int rows, const int8_t* w, const bf16_t* scales, float* out, int ldc,
                  int outputs) {
  block(x, K, rows, w, scales, out, ldc, outputs);
}

}  // namespace int8
}  // namespace swift_kernels
