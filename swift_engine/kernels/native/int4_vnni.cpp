// Weight-only int4 products with int8 activations on AVX-512 VNNI (VPDPBUSD) for CPUs without AMX
// tiles: llama.cpp's arithmetic for 4-bit files (its Q4 x Q8 dot products), with every weight block
// read and unpacked once for all of a pass's rows.
//
// Why: on a CPU without AMX (AMD Zen 4 measured: docs/bench/measurements.md#without-amx) the bfloat16
// path (int4_avx512.cpp) is bound by its VDPBF16PS work -- 32 products per instruction -- so a pass of
// 8 rows cost 1.9 one-row steps. VPDPBUSD multiplies 64 byte pairs per instruction and the codes
// need no conversion to bfloat16: the same rows cost about half the instructions.
//
// How: each row's inputs are quantized per group (the weights' group, 32..256 inputs) to int8,
// x ~ d * xq with d = max|x| / 127 and xq = round(x / d); a group's codes (0..15, unsigned) times xq
// are exact int32 sums, and per output
//   sum_k x[k] * ((q[k] - 8) * s + z) ~ d * s * (sum_k xq[k] * q[k] - 8 * sum_k xq[k]) + z * sum_k x[k]
// (sum_k x[k] in float32, as the bfloat16 path computes it). The codes of inputs k..k+3 of a column
// are one 32-bit lane: aten's packing (byte j of input row k: column j low, j + 32 high) is
// rearranged with one two-source byte permutation per 16 columns.
//
// Bits: a row's result depends only on that row and the weights: its quantization uses its own
// inputs, the integer sums are exact, and the epilogue is one fixed sequence per group -- whichever
// rows share the pass. Not the bfloat16 path's results (the inputs are rounded to 8 bits per group):
// a machine runs one path for every pass, chosen once per process (int4_amx.cpp's int4_mm).
//
// Operands as int4_amx.cpp's; full 64-column blocks only (a partial last block, 16..48 columns packed
// as column pairs, takes the bfloat16 path: every row of it does).

#include "int4_codes.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace swift_kernels {
namespace int4 {

// Row `x` [K] bfloat16 -> xq [K] int8 and per group: scale d, sum of xq (int32). One fixed sequence of
// operations per group: max |x|, 127 / max, x * that rounded to nearest even.
void quantize_row(const bf16_t* x, int K, int group, int8_t* xq, float* scale, int32_t* qsum) {
  for (int g = 0; g < K / group; ++g) {
    const bf16_t* xg = x + g * group;
    __m512 amax = _mm512_setzero_ps();
    for (int k = 0; k < group; k += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(load_bf16(xg + k)));
    const float m = _mm512_reduce_max_ps(amax);
    const float inv = m > 0.0f ? 127.0f / m : 0.0f;
    scale[g] = m / 127.0f;
    __m512i total = _mm512_setzero_si512();
    for (int k = 0; k < group; k += 16) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(load_bf16(xg + k), _mm512_set1_ps(inv)));  // nearest even
      total = _mm512_add_epi32(total, q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + g * group + k), _mm512_cvtepi32_epi8(q));
    }
    qsum[g] = _mm512_reduce_add_epi32(total);
  }
}

namespace {

constexpr int FUSED_ROWS = 4;  // rows per pass over a group's codes (4 x 4 int32 accumulators)
constexpr int SCALES_AHEAD = 2;  // groups whose scales and zeros are prefetched ahead (vnni_block)

// The byte indices of one 16-column tile's lanes: column c's codes of inputs k, k + 1 (from the first
// source: its bytes c and 32 + c) and k + 2, k + 3 (the second source's), for columns 16 half + c
inline __m512i quad_index(int half) {
  alignas(64) uint8_t index[64];
  for (int c = 0; c < 16; ++c) {
    index[4 * c] = static_cast<uint8_t>(16 * half + c);
    index[4 * c + 1] = static_cast<uint8_t>(32 + 16 * half + c);
    index[4 * c + 2] = static_cast<uint8_t>(64 + 16 * half + c);
    index[4 * c + 3] = static_cast<uint8_t>(96 + 16 * half + c);
  }
  return _mm512_load_si512(index);
}

struct Quads {
  __m512i first = quad_index(0), second = quad_index(1), nibble = _mm512_set1_epi8(0x0F);
};

// inputs k..k+3 (4 rows of aten's packing, 128 bytes at b) of a full block: 4 tiles of 16 columns,
// each lane a column's 4 codes (unsigned bytes)
inline void quad_codes(const Quads& u, const uint8_t* b, __m512i* codes) {
  const __m512i l0 = _mm512_loadu_si512(b), l1 = _mm512_loadu_si512(b + 64);
  const __m512i lo0 = _mm512_and_si512(l0, u.nibble), lo1 = _mm512_and_si512(l1, u.nibble);
  const __m512i hi0 = _mm512_and_si512(_mm512_srli_epi16(l0, 4), u.nibble);
  const __m512i hi1 = _mm512_and_si512(_mm512_srli_epi16(l1, 4), u.nibble);
  codes[0] = _mm512_permutex2var_epi8(lo0, u.first, lo1);
  codes[1] = _mm512_permutex2var_epi8(lo0, u.second, lo1);
  codes[2] = _mm512_permutex2var_epi8(hi0, u.first, hi1);
  codes[3] = _mm512_permutex2var_epi8(hi0, u.second, hi1);
}

// A group's integer sums for ROWS rows, then into the running output acc [rows][64]:
//   acc += float(dot - 8 qsum) * (d * s);  acc += sum(x) * z
template <int ROWS, bool BUFFERED>
inline void group_rows(const Quads& u, const int8_t* xq, int ldq, int k0, int group, const uint8_t* b,
                       const __m512i* codes, const float* d, const int32_t* qsum, const float* sums, int groups, int g,
                       const __m512* scale, const __m512* zero, float* acc) {
  __m512i dot[FUSED_ROWS][4];
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < 4; ++c) dot[r][c] = _mm512_setzero_si512();
  for (int kq = 0; kq < group / 4; ++kq) {
    __m512i local[4];
    const __m512i* quad = local;
    if constexpr (BUFFERED) quad = codes + 4 * kq;
    else quad_codes(u, b + kq * 128, local);
    for (int r = 0; r < ROWS; ++r) {
      const __m512i x4 = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(xq + static_cast<int64_t>(r) * ldq + k0 + 4 * kq));
      for (int c = 0; c < 4; ++c) dot[r][c] = dpbusd(dot[r][c], quad[c], x4);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    const __m512i shift = _mm512_set1_epi32(8 * qsum[r * groups + g]);
    const __m512 dr = _mm512_set1_ps(d[r * groups + g]), total = _mm512_set1_ps(sums[r * groups + g]);
    for (int c = 0; c < 4; ++c) {
      float* o = acc + r * BLOCK_N + 16 * c;
      const __m512 part = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot[r][c], shift));
      const __m512 v = _mm512_fmadd_ps(part, _mm512_mul_ps(dr, scale[c]), _mm512_load_ps(o));
      _mm512_store_ps(o, _mm512_fmadd_ps(total, zero[c], v));
    }
  }
}

template <bool BUFFERED>
void rows_of_group(int rows, const Quads& u, const int8_t* xq, int ldq, int k0, int group, const uint8_t* b,
                   const __m512i* codes, const float* d, const int32_t* qsum, const float* sums, int groups, int g,
                   const __m512* scale, const __m512* zero, float* acc) {
  switch (rows) {
    case 1: group_rows<1, BUFFERED>(u, xq, ldq, k0, group, b, codes, d, qsum, sums, groups, g, scale, zero, acc); break;
    case 2: group_rows<2, BUFFERED>(u, xq, ldq, k0, group, b, codes, d, qsum, sums, groups, g, scale, zero, acc); break;
    case 3: group_rows<3, BUFFERED>(u, xq, ldq, k0, group, b, codes, d, qsum, sums, groups, g, scale, zero, acc); break;
    default: group_rows<4, BUFFERED>(u, xq, ldq, k0, group, b, codes, d, qsum, sums, groups, g, scale, zero, acc); break;
  }
}

}  // namespace

// A thread's buffer of unpacked codes (MAX_GROUP vectors). Thread-local, not on the stack: with the
// buffer in vnni_block's frame or its caller's, passes of 8 rows took ~10-20% longer (measured on the
// Zen 4 VM, the cause not found).
__m512i* codes_buffer() {
  alignas(64) static thread_local __m512i codes[MAX_GROUP];
  return codes;
}

void vnni_block(const int8_t* xq, int ldq, int rows, const float* d, const int32_t* qsum, const float* sums,
                const uint8_t* b, const bf16_t* sz, int ldsz, bf16_t* out, int ldc, int K, int group, __m512i* codes) {
  alignas(64) float acc[AMX_ROWS * BLOCK_N];  // the running output, [rows][64]; codes: a group's, [group / 4][4 tiles]
  for (int i = 0; i < rows * BLOCK_N; i += 16) _mm512_store_ps(acc + i, _mm512_setzero_ps());
  const Quads u;
  const int groups = K / group, row_bytes = 32;  // a full block: 64 columns x 4 bits per input
  const bool buffered = rows > FUSED_ROWS;
  for (int g = 0; g < groups; ++g) {
    const int k0 = g * group;
    const uint8_t* gb = b + static_cast<int64_t>(k0) * row_bytes;
    // the next group's codes stream in while this one multiplies -- for passes of more than FUSED_ROWS
    // rows: at fewer the hardware's prefetchers keep up with the codes (an engine's one-token step
    // 0.97x the time without these on SmolLM2 and Qwen2.5-Coder, 8-16 rows 1.04-1.11x; measured
    // interleaved in one process, docs/bench/measurements.md#int4-scale-prefetch)
    if (buffered && k0 + group < K)
      for (int line = 0; line < group * row_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(gb + group * row_bytes + line), _MM_HINT_T0);
    // and the scales and zeros two groups on (4 lines, N x 4 bytes apart from group to group: a stride the
    // hardware's prefetchers did not follow): the 210 one-row products of SmolLM2's shapes 0.86-0.90x the
    // time, 8 rows 0.81-0.86x; Qwen2.5-Coder's 0.85x and 0.78x (docs/bench/measurements.md#int4-scale-prefetch)
    if (g + SCALES_AHEAD < groups)
      for (int line = 0; line < 4 * 64; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(sz + (g + SCALES_AHEAD) * ldsz) + line, _MM_HINT_T0);
    __m512 scale[4], zero[4];
    load_scales<4>(sz + g * ldsz, scale, zero);
    if (!buffered) {
      rows_of_group<false>(rows, u, xq, ldq, k0, group, gb, nullptr, d, qsum, sums, groups, g, scale, zero, acc);
      continue;
    }
    for (int kq = 0; kq < group / 4; ++kq) quad_codes(u, gb + kq * 128, codes + 4 * kq);
    for (int r0 = 0; r0 < rows; r0 += FUSED_ROWS)
      rows_of_group<true>(std::min(FUSED_ROWS, rows - r0), u, xq + static_cast<int64_t>(r0) * ldq, ldq, k0, group,
                          gb, codes, d + r0 * groups, qsum + r0 * groups, sums + r0 * groups, groups, g, scale, zero,
                          acc + r0 * BLOCK_N);
  }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < 4; ++c)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + static_cast<int64_t>(r) * ldc + 16 * c),
                          to_bf16(_mm512_load_ps(acc + r * BLOCK_N + 16 * c)));
}

}  // namespace int4
}  // namespace swift_kernels
