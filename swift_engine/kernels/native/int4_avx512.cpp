// Weight-only int4 products on AVX-512 BF16 (VDPBF16PS) for CPUs without AMX tiles: every weight block
// is read and unpacked once for all of a pass's rows. (Without AMX int4_vnni.cpp is the default; this
// path keeps bfloat16 inputs: SWIFT_NATIVE_VNNI=0, and a partial last block of 16..48 columns.)
//
// Why: PyTorch's kernel re-reads and re-converts the weights for each block of 4 rows, so a
// verification pass of k rows costs about ceil(k/4) one-row steps. Here the unpacked codes of a
// group (int4_codes.h: the AMX B-tile layout, one register per 16 columns and input pair) are
// multiplied by every row's broadcast input pair before the next group is read: the memory traffic
// of a pass is the one-row step's, and a row adds only its VDPBF16PS work.
//
// Bits: a row's result depends only on that row and the weights: per row and 16 columns the group's
// sum is one chain of VDPBF16PS over the input pairs in order, then acc = acc + part * s and
// acc = acc + sum(a) * (z - 136 s), group after group -- the same instructions whether the codes come
// straight from the unpacking (passes of up to FUSED_ROWS rows) or from the group's buffer (more
// rows, taken FUSED_ROWS at a time). Not bitwise the AMX kernel's (a tile's dot-product order is the
// hardware's) nor PyTorch's: a machine uses one of them throughout, and each is row-invariant.

#include "int4_codes.h"

#include <algorithm>
#include <cstdint>

namespace swift_kernels {
namespace int4 {
namespace {

constexpr int FUSED_ROWS = 4;  // rows multiplied per pass over a group's codes (4 x 4 accumulators)

// the byte permutations of block_codes (pair_index), made once per block and kept in registers
struct Unpack {
  __m512i first = pair_index(0), second = pair_index(1);
  __m512i nibble = _mm512_set1_epi16(0xF), base = _mm512_set1_epi16(static_cast<short>(CODE_BASE));
};

// one input pair's codes for a full block's 64 columns: tile row kp of block_codes, in registers
inline void pair_codes(const Unpack& u, const uint8_t* b, int kp, __m512i* codes) {
  const __m512i low = _mm512_loadu_si512(b + kp * 64);
  const __m512i high = _mm512_srli_epi16(low, 4);
  codes[0] = _mm512_ternarylogic_epi32(_mm512_permutexvar_epi8(u.first, low), u.nibble, u.base, 0xEA);
  codes[1] = _mm512_ternarylogic_epi32(_mm512_permutexvar_epi8(u.second, low), u.nibble, u.base, 0xEA);
  codes[2] = _mm512_ternarylogic_epi32(_mm512_permutexvar_epi8(u.first, high), u.nibble, u.base, 0xEA);
  codes[3] = _mm512_ternarylogic_epi32(_mm512_permutexvar_epi8(u.second, high), u.nibble, u.base, 0xEA);
}

// part[r][c] += row r's input pair (k, k + 1) x codes[c], for ROWS rows
template <int ROWS, int COLS>
inline void multiply(const bf16_t* a, int lda, int k, const __m512i* codes, __m512 (*part)[4]) {
  for (int r = 0; r < ROWS; ++r) {
    const __m512bh pair = reinterpret_cast<__m512bh>(
        _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(a + static_cast<int64_t>(r) * lda + k)));
    for (int c = 0; c < COLS; ++c)
      part[r][c] = dpbf16(part[r][c], pair, reinterpret_cast<__m512bh>(codes[c]));
  }
}

// the group's sums into the running output acc [rows][64] (int4_codes.h's identity)
template <int ROWS, int COLS>
inline void add_group(__m512 (*part)[4], const __m512* scale, const __m512* zero, const float* sums, int groups,
                      int g, float* acc) {
  for (int r = 0; r < ROWS; ++r) {
    const __m512 total = _mm512_set1_ps(sums[r * groups + g]);
    for (int c = 0; c < COLS; ++c) {
      float* o = acc + r * BLOCK_N + 16 * c;
      const __m512 v = _mm512_fmadd_ps(part[r][c], scale[c], _mm512_load_ps(o));
      _mm512_store_ps(o, _mm512_fmadd_ps(total, zero[c], v));
    }
  }
}

// ROWS (<= FUSED_ROWS) rows of one group, the codes read from `codes` ([group / 2][4] registers'
// worth: BUFFERED) or unpacked from the packed weight `b` on the way (a full block)
template <int ROWS, int COLS, bool BUFFERED>
inline void group_rows(const Unpack& u, const bf16_t* a, int lda, int k0, int group, const uint8_t* b,
                       const __m512i* codes, const __m512* scale, const __m512* zero, const float* sums, int groups,
                       int g, float* acc) {
  __m512 part[FUSED_ROWS][4];
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) part[r][c] = _mm512_setzero_ps();
  for (int kp = 0; kp < group / 2; ++kp) {
    if constexpr (BUFFERED) {
      multiply<ROWS, COLS>(a, lda, k0 + 2 * kp, codes + 4 * kp, part);
    } else {
      __m512i local[4];
      pair_codes(u, b, kp, local);
      multiply<ROWS, COLS>(a, lda, k0 + 2 * kp, local, part);
    }
  }
  add_group<ROWS, COLS>(part, scale, zero, sums, groups, g, acc);
}

template <int COLS, bool BUFFERED>
void rows_of_group(int rows, const Unpack& u, const bf16_t* a, int lda, int k0, int group, const uint8_t* b,
                   const __m512i* codes, const __m512* scale, const __m512* zero, const float* sums, int groups, int g,
                   float* acc) {
  switch (rows) {
    case 1: group_rows<1, COLS, BUFFERED>(u, a, lda, k0, group, b, codes, scale, zero, sums, groups, g, acc); break;
    case 2: group_rows<2, COLS, BUFFERED>(u, a, lda, k0, group, b, codes, scale, zero, sums, groups, g, acc); break;
    case 3: group_rows<3, COLS, BUFFERED>(u, a, lda, k0, group, b, codes, scale, zero, sums, groups, g, acc); break;
    default: group_rows<4, COLS, BUFFERED>(u, a, lda, k0, group, b, codes, scale, zero, sums, groups, g, acc); break;
  }
}

template <int COLS>
void block(const bf16_t* a, int lda, int rows, const float* sums, const uint8_t* b, const bf16_t* sz, int ldsz,
           bf16_t* out, int ldc, int K, int group) {
  alignas(64) float acc[AMX_ROWS * BLOCK_N];                   // the running output, [rows][64]
  alignas(64) bf16_t codes[MAX_GROUP / TILE_K * 4 * 512];       // a group's codes, [group / 2][4][32]
  for (int i = 0; i < rows * BLOCK_N; i += 16) _mm512_store_ps(acc + i, _mm512_setzero_ps());
  const int row_bytes = COLS * 8, groups = K / group;
  // full blocks of up to FUSED_ROWS rows unpack as they multiply; otherwise a group is unpacked once
  // into `codes` (block_codes' tile layout, rearranged by pair: [kp][column tile]) and read per rows
  const bool buffered = COLS != 4 || rows > FUSED_ROWS;
  const Unpack u;
  for (int g = 0; g < groups; ++g) {
    const int k0 = g * group;
    const uint8_t* gb = b + static_cast<int64_t>(k0) * row_bytes;
    if (k0 + group < K)  // the next group's codes: the weights stream while this group multiplies
      for (int line = 0; line < group * row_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(gb + group * row_bytes + line), _MM_HINT_T0);
    __m512 scale[4], zero[4];
    load_scales<COLS>(sz + g * ldsz, scale, zero);
    for (int c = 0; c < COLS; ++c) zero[c] = _mm512_fnmadd_ps(_mm512_set1_ps(ZERO_SHIFT), scale[c], zero[c]);
    if (!buffered) {
      if constexpr (COLS == 4)
        rows_of_group<COLS, false>(rows, u, a, lda, k0, group, gb, nullptr, scale, zero, sums, groups, g, acc);
      continue;
    }
    {
      alignas(64) bf16_t tiles[4 * 512];
      auto* dst = reinterpret_cast<__m512i*>(codes);
      for (int s = 0; s < group / TILE_K; ++s) {
        if constexpr (COLS == 4) block_codes(gb + s * TILE_K * row_bytes, tiles);
        else partial_codes<COLS>(gb + s * TILE_K * row_bytes, tiles);
        for (int kp = 0; kp < TILE_K / 2; ++kp)
          for (int c = 0; c < COLS; ++c)
            dst[(s * TILE_K / 2 + kp) * 4 + c] = _mm512_load_si512(tiles + c * 512 + kp * 32);
      }
    }
    const auto* pairs = reinterpret_cast<const __m512i*>(codes);
    for (int r0 = 0; r0 < rows; r0 += FUSED_ROWS)
      rows_of_group<COLS, true>(std::min(FUSED_ROWS, rows - r0), u, a + static_cast<int64_t>(r0) * lda, lda, k0,
                                group, gb, pairs, scale, zero, sums + r0 * groups, groups, g, acc + r0 * BLOCK_N);
  }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < COLS; ++c)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + static_cast<int64_t>(r) * ldc + 16 * c),
                          to_bf16(_mm512_load_ps(acc + r * BLOCK_N + 16 * c)));
}

}  // namespace

void avx512_block(int cols, const bf16_t* a, int lda, int rows, const float* sums, const uint8_t* b, const bf16_t* sz,
                  int ldsz, bf16_t* out, int ldc, int K, int group) {
  switch (cols / 16) {
    case 4: block<4>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group); break;
    case 3: block<3>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group); break;
    case 2: block<2>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group); break;
    default: block<1>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group); break;
  }
}

}  // namespace int4
}  // namespace swift_kernels
