// Weight-only int8 products with int8 inputs on AVX-512 VNNI (VPDPBUSD), for CPUs without AMX tiles:
// the int8 weights multiply as they lie, with no conversion to bfloat16.
//
// Why: on bfloat16 inputs (int8_avx512.cpp) every 32 weights cost five instructions to convert before
// one VDPBF16PS, so the one-row product is bound by instructions, not memory: an int4 model's int8
// output head (Qwen's is 136 MB, a third of its step) and int8 models' every layer were the slowest
// part of a step on the Zen 4 VM (docs/bench/measurements.md#without-amx).
//
// Layout: the weights [N, K] as tiles of 16 outputs, [N / 16][K / 4][16 outputs][4 inputs], each code
// stored as the unsigned byte w + 128 (pack_vnni). One VPDPBUSD then multiplies 16 outputs by 4 inputs
// of a row (broadcast from memory), so a group of 32 inputs adds up as integers in one register per
// 16 outputs, with one conversion and one multiply-add per group -- where the rows' order [N][K] took
// one conversion and multiply-add per VPDPBUSD, and passes of 8-16 rows were bound by those
// instructions (the head of Qwen2.5-Coder at 16 rows: 0.58-0.62x the time in this layout;
// docs/bench/kernels/int8-head-layout.md).
//
// How: each row's inputs are rounded to int8 per group of 32 (int4_vnni.cpp's quantize_row: scale d_g,
// codes xq). A group's sum starts at -128 * sum(xq in g) and takes the VPDPBUSDs of (w + 128) and xq:
//   S_g = sum_{k in g} xq[k] w[k]  -- an exact integer, however it is added up;
// then, per output, in group order: acc = fma(float(S_g), d_g, acc), and the output is acc times the
// weight row's scale, rounded to bfloat16 (or widened from that, for the float head).
//
// Bits: an output depends only on its input row and its weight row -- the row's own quantization,
// exact integer group sums, one fixed float sequence -- whichever rows share the pass and however the
// pass is split into row and output blocks.

#include "pool.h"
#include "tiles.h"

#include <algorithm>
#include <cstdint>

namespace swift_kernels {
namespace int8 {
namespace {

constexpr int GROUP = 32;       // inputs per scale of the rounded rows
constexpr int CHUNKS = GROUP / 4;  // VPDPBUSDs per group and 16 outputs
constexpr int ROW_BLOCK = 8;    // rows whose sums stay in registers together
// 64-byte lines read ahead in a tile's stream by software prefetch, for blocks of more than
// PREFETCH_ABOVE_ROWS rows only: the tiles stream in order, which the hardware's prefetchers follow, and
// an engine's one-token step was 0.92-0.95x the time without the instructions (int8 SmolLM2; int4
// models' int8 heads 0.93-0.97x), while passes of 8-16 rows kept them within 0.97-1.03x
// (docs/bench/measurements.md#int8-tiles)
constexpr int PREFETCH_LINES = 16;
constexpr int PREFETCH_ABOVE_ROWS = 4;

// sums[r][16 t + lane] for ROWS rows and TILES tiles of 16 outputs (w: the first tile, tile_bytes apart)
template <int ROWS, int TILES>
inline void tiles_rows(const int8_t* xq, int K, const float* d, const int32_t* offsets, const uint8_t* w,
                       int64_t tile_bytes, float* sums, int lds) {
  const int groups = K / GROUP;
  __m512 acc[ROWS][TILES];
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TILES; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    __m512i dot[ROWS][TILES];
    for (int r = 0; r < ROWS; ++r)
      for (int t = 0; t < TILES; ++t) dot[r][t] = _mm512_set1_epi32(offsets[r * groups + g]);
    for (int c = 0; c < CHUNKS; ++c) {
      const int64_t line = static_cast<int64_t>(g * CHUNKS + c) * 64;
      __m512i wv[TILES];
      for (int t = 0; t < TILES; ++t) {  // past the last tile: a prefetch never faults
        if constexpr (ROWS > PREFETCH_ABOVE_ROWS)
          _mm_prefetch(reinterpret_cast<const char*>(w + t * tile_bytes + line + PREFETCH_LINES * 64), _MM_HINT_T0);
        wv[t] = _mm512_loadu_si512(w + t * tile_bytes + line);
      }
      for (int r = 0; r < ROWS; ++r) {
        const int8_t* x4 = xq + static_cast<int64_t>(r) * K + (g * CHUNKS + c) * 4;
        for (int t = 0; t < TILES; ++t) dot[r][t] = dpbusd_broadcast(dot[r][t], wv[t], x4);
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      const __m512 dg = _mm512_set1_ps(d[r * groups + g]);
      for (int t = 0; t < TILES; ++t) acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][t]), dg, acc[r][t]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TILES; ++t) _mm512_storeu_ps(sums + r * lds + 16 * t, acc[r][t]);
}

// ROWS rows over `tiles` tiles, TILES at a time (then one at a time)
template <int ROWS, int TILES>
inline void rows_over_tiles(const int8_t* xq, int K, const float* d, const int32_t* offsets, const uint8_t* w,
                            int tiles, float* sums, int lds) {
  const int64_t tile_bytes = static_cast<int64_t>(K) * 16;
  int t = 0;
  for (; t + TILES <= tiles; t += TILES) tiles_rows<ROWS, TILES>(xq, K, d, offsets, w + t * tile_bytes, tile_bytes, sums + 16 * t, lds);
  for (; t < tiles; ++t) tiles_rows<ROWS, 1>(xq, K, d, offsets, w + t * tile_bytes, tile_bytes, sums + 16 * t, lds);
}

template <typename OUT>
void block(const int8_t* xq, int K, int rows, const float* d, const int32_t* offsets, const uint8_t* w,
           const bf16_t* scales, OUT* out, int ldc, int outputs) {
  constexpr int MAX_OUT = 64;
  alignas(64) float sums[AMX_ROWS * MAX_OUT];  // [rows][outputs]
  const int groups = K / GROUP, tiles = outputs / 16;
  for (int r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
    const int8_t* x = xq + static_cast<int64_t>(r0) * K;
    const float* dr = d + r0 * groups;
    const int32_t* orow = offsets + r0 * groups;
    float* s = sums + r0 * MAX_OUT;
    // independent sums in flight: at least 4 (a VPDPBUSD's latency), at most what the registers hold
    switch (std::min(ROW_BLOCK, rows - r0)) {
      case 1: rows_over_tiles<1, 4>(x, K, dr, orow, w, tiles, s, MAX_OUT); break;
      case 2: rows_over_tiles<2, 4>(x, K, dr, orow, w, tiles, s, MAX_OUT); break;
      case 3: rows_over_tiles<3, 2>(x, K, dr, orow, w, tiles, s, MAX_OUT); break;
      case 4: rows_over_tiles<4, 2>(x, K, dr, orow, w, tiles, s, MAX_OUT); break;
      case 5: rows_over_tiles<5, 1>(x, K, dr, orow, w, tiles, s, MAX_OUT); break;
      case 6: rows_over_tiles<6, 1>(x, K, dr, orow, w, tiles, s, MAX_OUT); break;
      case 7: rows_over_tiles<7, 1>(x, K, dr, orow, w, tiles, s, MAX_OUT); break;
      default: rows_over_tiles<8, 1>(x, K, dr, orow, w, tiles, s, MAX_OUT); break;
    }
  }
  store_scaled(sums, MAX_OUT, rows, outputs, scales, out, ldc);
}

}  // namespace

void pack_vnni(const int8_t* w, int64_t N, int K, uint8_t* packed) {
  const int quads = K / 4;
  parallel_for(N / 16, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile)
      for (int o = 0; o < 16; ++o) {
        const auto* row = reinterpret_cast<const uint32_t*>(w + (tile * 16 + o) * K);
        auto* dst = reinterpret_cast<uint32_t*>(packed + tile * 16 * K) + o;
        for (int q = 0; q < quads; ++q) dst[q * 16] = row[q] ^ 0x80808080u;  // w + 128, byte by byte
      }
  });
}

void vnni_block(const int8_t* xq, int K, int rows, const float* d, const int32_t* offsets, const uint8_t* w,
                const bf16_t* scales, bf16_t* out, int ldc, int outputs) {
  block(xq, K, rows, d, offsets, w, scales, out, ldc, outputs);
}

void vnni_block(const int8_t* xq, int K, int rows, const float* d, const int32_t* offsets, const uint8_t* w,
                const bf16_t* scales, float* out, int ldc, int outputs) {
  block(xq, K, rows, d, offsets, w, scales, out, ldc, outputs);
}

}  // namespace int8
}  // namespace swift_kernels
