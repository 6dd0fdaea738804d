// Weight-only int8 products with int8 inputs on AVX-512 VNNI (VPDPBUSD), for CPUs without AMX tiles:
// the int8 weights multiply as they lie, with no conversion to bfloat16.
//
// Why: on bfloat16 inputs (int8_avx512.cpp) every 32 weights cost five instructions to convert before
// one VDPBF16PS, so the one-row product is bound by instructions, not memory: an int4 model's int8
// output head (Qwen's is 136 MB, a third of its step) and int8 models' every layer were the slowest
// part of a step on the Zen 4 VM (docs/bench/measurements.md#without-amx).
//
// How: each row's inputs are rounded to int8 per group of 32 (int4_vnni.cpp's quantize_row), and for a
// weight row w (signed) the unsigned operand is w + 128 (one XOR of the sign bit):
//   sum_k x[k] w[k] ~ sum_g d_g * (sum_{k in g} xq[k] (w[k] + 128)) - 128 * sum_g d_g * sum_{k in g} xq[k]
// so per 64 weights and row: one VPDPBUSD into 16 int32 lanes (8 per group), converted and scaled by
// their groups' d;
// the lanes are summed once at the end and the row's correction (the second term) subtracted, then the
// output's scale applied and the result rounded to bfloat16 (or widened from that, for the float head).
//
// Bits: an output depends only on its input row and its weight row -- the row's own quantization,
// exact integer group sums, one fixed float sequence -- whichever rows share the pass.

#include "int4_codes.h"
#include "tiles.h"

#include <algorithm>
#include <cstdint>

namespace swift_kernels {
namespace int8 {
namespace {

constexpr int FUSED_ROWS = 4;  // rows per pass over four weight rows (16 accumulators)
constexpr int QUAD = 4;        // weight rows multiplied together
// Weight rows read ahead of the ones multiplied (software prefetch, one line per row and vector of 64):
// a one-row head product is bound by memory, and the hardware's prefetchers alone reached about half
// the read bandwidth (SmolLM2's 28 MB head after a step: 1.70-1.85 ms -> 1.33-1.36 ms; Qwen2.5-Coder's
// 8-row pass 37.0 -> 29.9 ms; docs/bench/measurements.md#head-prefetch).
constexpr int PREFETCH_ROWS = 16;
// Up to this many rows the weights stream in row by row (quad_rows_by_output), beyond it a group of four
// rows at a time (quad_rows): the same bits either way. Row by row, one row of Qwen2.5-Coder's 136 MB head
// took 0.50-0.54x the time (4.6-5.6 ms against 9.3-10.4 after flushing the caches), SmolLM2's 0.57-0.84x;
// 4 rows 0.83-1.0x; from 8 rows on it was 1.3-2x slower, as each weight vector serves fewer rows at once
// (docs/bench/measurements.md#head-by-row).
constexpr int BY_OUTPUT_ROWS = 4;

template <int ROWS>
inline void quad_rows(const int8_t* xq, int K, const float* d, const float* correction, const int8_t* w,
                      float* sums, int lds) {
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  const int groups = K / VNNI_GROUP;
  __m512 acc[FUSED_ROWS][QUAD];
  for (int r = 0; r < ROWS; ++r)
    for (int o = 0; o < QUAD; ++o) acc[r][o] = _mm512_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    __m512i wv[QUAD];
    for (int o = 0; o < QUAD; ++o)  // past the last row: a prefetch never faults
      _mm_prefetch(reinterpret_cast<const char*>(w + static_cast<int64_t>(o + PREFETCH_ROWS) * K + g * VNNI_GROUP),
                   _MM_HINT_T0);
    for (int o = 0; o < QUAD; ++o)
      wv[o] = _mm512_xor_si512(_mm512_loadu_si512(w + static_cast<int64_t>(o) * K + g * VNNI_GROUP), sign);
    for (int r = 0; r < ROWS; ++r) {
      const __m512i xv = _mm512_loadu_si512(xq + static_cast<int64_t>(r) * K + g * VNNI_GROUP);
      // lanes 0-7 hold the first 32 inputs' sums, 8-15 the next 32's: each group of 32 its own scale
      const float* dr = d + r * 2 * groups + 2 * g;
      const __m512 dg = _mm512_insertf32x8(_mm512_set1_ps(dr[0]), _mm256_set1_ps(dr[1]), 1);
      for (int o = 0; o < QUAD; ++o) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[o], xv);
        acc[r][o] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), dg, acc[r][o]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int o = 0; o < QUAD; ++o) sums[r * lds + o] = _mm512_reduce_add_ps(acc[r][o]) - correction[r];
}

// The same sums as quad_rows, weight row by weight row: each row's groups in order, then the next row
// (quad_rows takes a group of all four rows, then the next group). Every output's float sequence is
// quad_rows' own, so the bits are too; what changes is the order the weights stream in.
template <int ROWS>
inline void quad_rows_by_output(const int8_t* xq, int K, const float* d, const float* correction, const int8_t* w,
                                float* sums, int lds) {
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  const int groups = K / VNNI_GROUP;
  for (int o = 0; o < QUAD; ++o) {
    const int8_t* wo = w + static_cast<int64_t>(o) * K;
    __m512 acc[FUSED_ROWS];
    for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
    for (int g = 0; g < groups; ++g) {
      _mm_prefetch(reinterpret_cast<const char*>(wo + static_cast<int64_t>(PREFETCH_ROWS) * K + g * VNNI_GROUP),
                   _MM_HINT_T0);
      const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(wo + g * VNNI_GROUP), sign);
      for (int r = 0; r < ROWS; ++r) {
        const __m512i xv = _mm512_loadu_si512(xq + static_cast<int64_t>(r) * K + g * VNNI_GROUP);
        const float* dr = d + r * 2 * groups + 2 * g;
        const __m512 dg = _mm512_insertf32x8(_mm512_set1_ps(dr[0]), _mm256_set1_ps(dr[1]), 1);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), dg, acc[r]);
      }
    }
    for (int r = 0; r < ROWS; ++r) sums[r * lds + o] = _mm512_reduce_add_ps(acc[r]) - correction[r];
  }
}

template <typename OUT>
void block(const int8_t* xq, int K, int rows, const float* d, const float* correction, const int8_t* w,
           const bf16_t* scales, OUT* out, int ldc, int outputs) {
  constexpr int MAX_OUT = 64;
  alignas(64) float sums[AMX_ROWS * MAX_OUT];  // [rows][outputs]
  const int groups = K / VNNI_GROUP;
  for (int n = 0; n < outputs; n += QUAD) {
    const int8_t* wq = w + static_cast<int64_t>(n) * K;
    for (int r0 = 0; r0 < rows; r0 += FUSED_ROWS) {
      const int8_t* x = xq + static_cast<int64_t>(r0) * K;
      const float *dr = d + r0 * 2 * groups, *cr = correction + r0;
      float* s = sums + r0 * MAX_OUT + n;
      if (rows <= BY_OUTPUT_ROWS) {
        switch (std::min(FUSED_ROWS, rows - r0)) {
          case 1: quad_rows_by_output<1>(x, K, dr, cr, wq, s, MAX_OUT); break;
          case 2: quad_rows_by_output<2>(x, K, dr, cr, wq, s, MAX_OUT); break;
          case 3: quad_rows_by_output<3>(x, K, dr, cr, wq, s, MAX_OUT); break;
          default: quad_rows_by_output<4>(x, K, dr, cr, wq, s, MAX_OUT); break;
        }
        continue;
      }
      switch (std::min(FUSED_ROWS, rows - r0)) {
        case 1: quad_rows<1>(x, K, dr, cr, wq, s, MAX_OUT); break;
        case 2: quad_rows<2>(x, K, dr, cr, wq, s, MAX_OUT); break;
        case 3: quad_rows<3>(x, K, dr, cr, wq, s, MAX_OUT); break;
        default: quad_rows<4>(x, K, dr, cr, wq, s, MAX_OUT); break;
      }
    }
  }
  store_scaled(sums, MAX_OUT, rows, outputs, scales, out, ldc);
}

}  // namespace

void vnni_block(const int8_t* xq, int K, int rows, const float* d, const float* correction, const int8_t* w,
                const bf16_t* scales, bf16_t* out, int ldc, int outputs) {
  block(xq, K, rows, d, correction, w, scales, out, ldc, outputs);
}

void vnni_block(const int8_t* xq, int K, int rows, const float* d, const float* correction, const int8_t* w,
                const bf16_t* scales, float* out, int ldc, int outputs) {
  block(xq, K, rows, d, correction, w, scales, out, ldc, outputs);
}

}  // namespace int8
}  // namespace swift_kernels
