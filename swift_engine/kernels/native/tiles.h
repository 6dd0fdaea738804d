// Shared pieces of swift's kernels: bfloat16 conversions, the dot-product instructions, AMX tile configuration.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace swift_kernels {

using bf16_t = uint16_t;

constexpr int AMX_ROWS = 16;  // rows (or columns) a tile pass multiplies at once
constexpr int TILE_K = 32;    // bfloat16 inputs per tile row

inline __m512 load_bf16(const bf16_t* p) {
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// acc + the dot products of a's and b's bfloat16 pairs (VDPBF16PS) / u8's unsigned and s8's signed byte
// quads (VPDPBUSD), written as the instructions themselves. Through the intrinsics GCC 12 moved every
// accumulator of an unrolled loop to another register and back on each step, or kept them on the stack
// (docs/bench/measurements.md#vnni-moves): SmolLM2's 210 int4 one-row products took 4.7-5.1 ms, 3.3-4.1 ms
// this way. Same instructions, same operands: the same bits.
inline __m512 dpbf16(__m512 acc, __m512bh a, __m512bh b) {
  asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
  return acc;
}

// the same with the four signed bytes at s8 broadcast to every lane, the broadcast folded into the instruction
inline __m512i dpbusd_broadcast(__m512i acc, __m512i u8, const int8_t* s8) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*reinterpret_cast<const int32_t*>(s8)));
  return acc;
}

// float32 -> bfloat16, round to nearest even, NaN -> 0xFFFF (PyTorch's vectorized conversion)
inline __m256i to_bf16(__m512 v) {
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)), bits);
  rounded = _mm512_srli_epi32(rounded, 16);
  __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  rounded = _mm512_mask_blend_epi32(ordered, _mm512_set1_epi32(0xFFFF), rounded);
  return _mm512_cvtepi32_epi16(rounded);
}

// out[r][t] = bfloat16(sums[r][t] * scales[t]) for `rows` rows of `outputs` (a multiple of 16) int8
// product sums (`lds` floats apart), or that bfloat16 widened back to float32 (OUT = float: an output
// head's logits, what `.float()` of the bfloat16 result gives) -- the int8 products' last step
template <typename OUT>
inline void store_scaled(const float* sums, int lds, int rows, int outputs, const bf16_t* scales, OUT* out, int ldc) {
  for (int r = 0; r < rows; ++r)
    for (int t = 0; t < outputs; t += 16) {
      const __m256i result = to_bf16(_mm512_mul_ps(_mm512_loadu_ps(sums + r * lds + t), load_bf16(scales + t)));
      if constexpr (sizeof(OUT) == 2) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + static_cast<int64_t>(r) * ldc + t), result);
      } else {
        _mm512_storeu_si512(out + static_cast<int64_t>(r) * ldc + t, _mm512_slli_epi32(_mm512_cvtepu16_epi32(result), 16));
      }
    }
}

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Load `cfg` as the tile configuration. The barrier makes the compiler write cfg's fields first:
// GCC does not treat ldtilecfg as reading its operand, and once dropped the fields' stores as dead
// (and reused the slot), which faulted on the next tile instruction (SIGILL, seen at -O3).
inline void load_tile_config(const TileConfig& cfg) {
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

// Whether this process uses AMX tiles (asked once; Linux needs the request; ops.cpp), else the
// kernels' AVX-512 BF16 paths.
bool amx_granted();

}  // namespace swift_kernels
