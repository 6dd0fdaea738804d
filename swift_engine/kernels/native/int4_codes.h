// The int4 weights' codes as exact bfloat16 pairs, shared by the AMX (int4_amx.cpp) and AVX-512
// (int4_avx512.cpp) products: both multiply the same values in the same per-row order.
//
// A code q (0..15) enters the products as the bfloat16 value 128 + q (bits 0x4300 | q: exact), and
// each group's scale s and zero z are applied afterwards, per output:
//   sum_k a[k] * ((q[k] - 8) * s + z) = s * sum_k a[k] * (128 + q[k]) + (z - 136 s) * sum_k a[k]
// The layout produced is the AMX B tile's, [16 input pairs][16 columns][2]: one 64-byte row holds,
// for 16 columns, the codes of inputs (k, k + 1) -- exactly what one VDPBF16PS multiplies by a row's
// broadcast input pair, so the vector path uses each tile row as one register.
#pragma once

#include "tiles.h"

#include <immintrin.h>

#include <cstdint>

namespace swift_kernels {
namespace int4 {

constexpr int BLOCK_N = 64;     // output columns per work item: aten's packing block
constexpr int MAX_GROUP = 256;  // largest quantization group taken

// The scales and zeros of a group for COLS x 16 columns: scale[c], zero[c] as float32 vectors. A
// column's (scale, zero) bfloat16 pair is one 32-bit word: the scale is its low half moved up, the
// zero its high half kept -- one load and two bit operations per 16 columns.
template <int COLS>
inline void load_scales(const bf16_t* sz, __m512* scale, __m512* zero) {
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int c = 0; c < COLS; ++c) {
    const __m512i pairs = _mm512_loadu_si512(sz + 32 * c);
    scale[c] = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
    zero[c] = _mm512_castsi512_ps(_mm512_and_si512(pairs, high));
  }
}

// A code q (0..15) enters the tiles as the bfloat16 value 128 + q, whose bits are 0x4300 | q: no
// table, one OR. (128 + q needs 8 significant bits: exact in bfloat16, as are its products with
// bfloat16 activations in float32.) The epilogue subtracts the 136 * sum(a) this adds (ZERO_SHIFT).
constexpr uint16_t CODE_BASE = 0x4300;  // bfloat16 bits of 128.0
constexpr float ZERO_SHIFT = 136.0f;    // 128 + the codes' offset of 8

// Byte indices that gather, for one B-tile row of 16 columns, each column's code of input k (from
// the first 32 bytes of a 64-byte load: input rows k, k + 1 of the block) and of input k + 1 (the
// next 32 bytes) into the low bytes of the row's (k, k + 1) word pairs: column tile t takes bytes
// 16 (t % 2) .. + 15 (t / 2: the high nibbles, from the load shifted right by 4).
inline __m512i pair_index(int half) {
  alignas(64) uint8_t index[64];
  for (int c = 0; c < 16; ++c) {
    index[4 * c] = static_cast<uint8_t>(16 * half + c);
    index[4 * c + 2] = static_cast<uint8_t>(32 + 16 * half + c);
    index[4 * c + 1] = index[4 * c + 3] = 0;  // high bytes: replaced by CODE_BASE's
  }
  return _mm512_load_si512(index);
}

// One tile step (TILE_K inputs) of a 64-column block as B tiles ([4][16 pairs][16 columns][2]).
// In aten's packing, byte j of input row k holds column j (low nibble) and j + 32 (high nibble);
// rows k and k + 1 are 64 consecutive bytes: one load, one shift for the high nibbles, and per
// column tile one byte permutation and one ternary-logic op ((x & 0xF) | 0x4300 per word).
inline void block_codes(const uint8_t* b, bf16_t* tiles) {
  static const __m512i first = pair_index(0), second = pair_index(1);
  const __m512i nibble = _mm512_set1_epi16(0xF), base = _mm512_set1_epi16(static_cast<short>(CODE_BASE));
  for (int kp = 0; kp < TILE_K / 2; ++kp) {
    const __m512i low = _mm512_loadu_si512(b + kp * 64);
    const __m512i high = _mm512_srli_epi16(low, 4);  // each byte's high nibble in its low 4 bits
    bf16_t* row = tiles + kp * 32;
    _mm512_store_si512(row, _mm512_ternarylogic_epi32(_mm512_permutexvar_epi8(first, low), nibble, base, 0xEA));
    _mm512_store_si512(row + 512, _mm512_ternarylogic_epi32(_mm512_permutexvar_epi8(second, low), nibble, base, 0xEA));
    _mm512_store_si512(row + 1024, _mm512_ternarylogic_epi32(_mm512_permutexvar_epi8(first, high), nibble, base, 0xEA));
    _mm512_store_si512(row + 1536, _mm512_ternarylogic_epi32(_mm512_permutexvar_epi8(second, high), nibble, base, 0xEA));
  }
}

// The same for a last, partial block of COLS x 16 columns, whose bytes hold column pairs (low, high).
template <int COLS>
inline void partial_codes(const uint8_t* b, bf16_t* tiles) {
  const int row_bytes = COLS * 8;
  for (int kp = 0; kp < TILE_K / 2; ++kp) {
    for (int c = 0; c < COLS; ++c) {
      __m128i in[2];
      for (int j = 0; j < 2; ++j) {  // 8 bytes -> 16 codes in column order
        __m128i bytes = _mm_cvtepu8_epi16(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + (2 * kp + j) * row_bytes + 8 * c)));
        in[j] = _mm_or_si128(_mm_and_si128(bytes, _mm_set1_epi16(0xF)), _mm_slli_epi16(_mm_srli_epi16(bytes, 4), 8));
      }
      __m256i pairs = _mm256_set_m128i(_mm_unpackhi_epi8(in[0], in[1]), _mm_unpacklo_epi8(in[0], in[1]));
      __m512i words = _mm512_or_si512(_mm512_cvtepu8_epi16(pairs), _mm512_set1_epi16(static_cast<short>(CODE_BASE)));
      _mm512_store_si512(reinterpret_cast<__m512i*>(tiles + c * 512 + kp * 32), words);
    }
  }
}

// sum of a row's `count` inputs from `a`, in float32, in one fixed order
inline float row_sum(const bf16_t* a, int count) {
  __m512 acc = _mm512_setzero_ps();
  for (int k = 0; k < count; k += 16) acc = _mm512_add_ps(acc, load_bf16(a + k));
  return _mm512_reduce_add_ps(acc);
}

// The AVX-512 product of one block of `cols` (16..64) columns and `rows` (<= 16) rows (int4_avx512.cpp):
// out[r][c] for the packed weight block `b`, its scales `sz` and the rows' per-group input sums.
void avx512_block(int cols, const bf16_t* a, int lda, int rows, const float* sums, const uint8_t* b, const bf16_t* sz,
                  int ldsz, bf16_t* out, int ldc, int K, int group);

// The int8-activation path (int4_vnni.cpp): a row's inputs quantized per group, and one full block
// (`codes`: the calling thread's codes_buffer(), asked for once for all its blocks).
void quantize_row(const bf16_t* x, int K, int group, int8_t* xq, float* scale, int32_t* qsum);
__m512i* codes_buffer();
void vnni_block(const int8_t* xq, int ldq, int rows, const float* d, const int32_t* qsum, const float* sums,
                const uint8_t* b, const bf16_t* sz, int ldsz, bf16_t* out, int ldc, int K, int group, __m512i* codes);

}  // namespace int4

// Whether int4 and int8 products without AMX round their inputs to int8 (int4_vnni.cpp, int8_vnni.cpp)
// rather than keep them bfloat16 (int4_avx512.cpp, int8_avx512.cpp): yes unless SWIFT_NATIVE_VNNI is
// "0" (ops.cpp; asked once).
bool uses_vnni();

}  // namespace swift_kernels
