// Weight-only int8 products on AMX tiles whose cost is nearly flat in the rows (1..16 per pass).
//
// Why (docs/bench/measurements.md#native-kernels): PyTorch's aten::_weight_int8pack_mm works in
// blocks of 4 rows and converts every weight again for each block; the int8 output head of an int4
// or int8 model then costs a verification pass of k rows about ceil(k/4) one-row heads.
//
// How: the product is computed transposed, out^T = W x^T, so the weights [N, K] int8 row-major are
// the A tiles as they lie (16 outputs x 32 inputs, converted to exact bfloat16: |q| <= 127 needs 7
// bits) and the activations, packed once per call into the B-tile layout (input pairs x rows), are
// the B tile. Each output's float32 sum is multiplied by its row's scale and rounded to bfloat16 --
// PyTorch's order of operations (sum, then scale), not its bits: the sums' order differs.
//
// Bits: an output depends only on its activation row and its weight row: tiles compute elements
// independently, the order over K is fixed (tile step after tile step), and every row count takes
// this path (tests/test_native_kernels.py checks every count up to 40 rows, in any order).
//
// Operands are aten's own (weight [N, K] int8, scales [N] bfloat16, x [M, K] bfloat16); N % 16 == 0
// and K % 32 == 0 (quantize.py sends other shapes to aten).

#include "int4_codes.h"
#include "pool.h"
#include "tiles.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace swift_kernels {

namespace int8 {  // int8_avx512.cpp: the same product of one block without AMX tiles
void avx512_block(const bf16_t* x, int K, int rows, const int8_t* w, const bf16_t* scales, bf16_t* out, int ldc,
                  int outputs);
void avx512_block(const bf16_t* x, int K, int rows, const int8_t* w, const bf16_t* scales, float* out, int ldc,
                  int outputs);
// int8_vnni.cpp: the product on inputs rounded to int8 per group of 32, from the weights packed in tiles
void pack_vnni(const int8_t* w, int64_t N, int K, uint8_t* packed);
void vnni_block(const int8_t* xq, int K, int rows, const float* d, const int32_t* offsets, const uint8_t* w,
                const bf16_t* scales, bf16_t* out, int ldc, int outputs);
void vnni_block(const int8_t* xq, int K, int rows, const float* d, const int32_t* offsets, const uint8_t* w,
                const bf16_t* scales, float* out, int ldc, int outputs);
}  // namespace int8

namespace {

constexpr int BLOCK_N = 64;  // outputs per work item: four A tiles of 16

// x rows [rows, K] -> B tiles [K / 32][16 pairs][rows][2]: a tile step's inputs of every row side by side
void pack_rows(const bf16_t* x, int K, int rows, bf16_t* packed) {
  for (int t = 0; t < K / TILE_K; ++t)
    for (int kp = 0; kp < TILE_K / 2; ++kp)
      for (int r = 0; r < rows; ++r) {
        bf16_t* dst = packed + ((t * (TILE_K / 2) + kp) * rows + r) * 2;
        dst[0] = x[r * K + t * TILE_K + 2 * kp];
        dst[1] = x[r * K + t * TILE_K + 2 * kp + 1];
      }
}

// 16 weight rows x 32 inputs (int8, row stride K) -> one A tile of exact bfloat16 values
inline void weights_to_tile(const int8_t* w, int K, bf16_t* tile) {
  for (int n = 0; n < 16; ++n) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + static_cast<int64_t>(n) * K));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
    _mm512_store_si512(reinterpret_cast<__m512i*>(tile + n * TILE_K),
                       reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));  // lo first: inputs in order
  }
}

inline void configure(int rows, int& configured) {
  if (configured == rows) return;
  TileConfig cfg;
  for (int t = 0; t < 4; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = static_cast<uint16_t>(4 * rows); }  // C: 16 out x rows
  cfg.rows[4] = cfg.rows[5] = 16; cfg.colsb[4] = cfg.colsb[5] = 64;                                 // A: 16 out x 32 in
  cfg.rows[6] = 16; cfg.colsb[6] = static_cast<uint16_t>(4 * rows);                                 // B: 16 pairs x rows
  load_tile_config(cfg);
  configured = rows;
}

// One tile step of output tile C (0..3): 16 weight rows converted into A tile A (4 or 5), times the rows' B tile 6.
// (The tile intrinsics name their registers literally, hence the spelled-out cases.)
template <int C, int A>
inline void step(const int8_t* w, int K, bf16_t* a_tile) {
  static_assert(A == 4 || A == 5, "A tiles are 4 and 5");
  weights_to_tile(w, K, a_tile);
  if constexpr (A == 4) _tile_loadd(4, a_tile, 64);
  else _tile_loadd(5, a_tile, 64);
  if constexpr (C == 0 && A == 4) _tile_dpbf16ps(0, 4, 6);
  else if constexpr (C == 1 && A == 5) _tile_dpbf16ps(1, 5, 6);
  else if constexpr (C == 2 && A == 4) _tile_dpbf16ps(2, 4, 6);
  else if constexpr (C == 3 && A == 5) _tile_dpbf16ps(3, 5, 6);
  else static_assert(C < 0, "tile C pairs with A tile 4 + C % 2");
}

// OUT: bf16_t, or float for the bfloat16 result widened (what `.float()` of the bfloat16 output gives)
template <int TILES, typename OUT>
void block(const bf16_t* packed, int rows, const int8_t* w, const bf16_t* scales, OUT* out, int ldc, int K,
           int& configured) {
  alignas(64) bf16_t a_tiles[2][16 * TILE_K];
  alignas(64) float sums[16 * 16];
  configure(rows, configured);
  _tile_zero(0);
  if constexpr (TILES > 1) _tile_zero(1);
  if constexpr (TILES > 2) _tile_zero(2);
  if constexpr (TILES > 3) _tile_zero(3);
  for (int k0 = 0; k0 < K; k0 += TILE_K) {
    if ((k0 / TILE_K) % 2 == 0 && k0 + 2 * TILE_K < K)  // one line ahead per weight row: two tile steps
      for (int n = 0; n < 16 * TILES; ++n)
        _mm_prefetch(reinterpret_cast<const char*>(w + static_cast<int64_t>(n) * K + k0 + 2 * TILE_K), _MM_HINT_T0);
    _tile_loadd(6, packed + (k0 / TILE_K) * (TILE_K / 2) * rows * 2, 4 * rows);
    // output tile t from weight rows 16t..16t+15 (A tiles 4 and 5 in turn: one converts while one multiplies)
    step<0, 4>(w + k0, K, a_tiles[0]);
    if constexpr (TILES > 1) step<1, 5>(w + 16 * static_cast<int64_t>(K) + k0, K, a_tiles[1]);
    if constexpr (TILES > 2) step<2, 4>(w + 32 * static_cast<int64_t>(K) + k0, K, a_tiles[0]);
    if constexpr (TILES > 3) step<3, 5>(w + 48 * static_cast<int64_t>(K) + k0, K, a_tiles[1]);
  }
  const __m512i across = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(16));
  auto store = [&](int t) {
    const __m512 scale = load_bf16(scales + 16 * t);
    for (int r = 0; r < rows; ++r) {  // column r of the tile: output row r's 16 outputs
      const __m512 v = _mm512_i32gather_ps(_mm512_add_epi32(across, _mm512_set1_epi32(r)), sums, 4);
      const __m256i result = to_bf16(_mm512_mul_ps(v, scale));
      if constexpr (sizeof(OUT) == 2) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ldc + 16 * t), result);
      } else {
        _mm512_storeu_si512(out + r * ldc + 16 * t, _mm512_slli_epi32(_mm512_cvtepu16_epi32(result), 16));
      }
    }
  };
  _tile_stored(0, sums, 64); store(0);
  if constexpr (TILES > 1) { _tile_stored(1, sums, 64); store(1); }
  if constexpr (TILES > 2) { _tile_stored(2, sums, 64); store(2); }
  if constexpr (TILES > 3) { _tile_stored(3, sums, 64); store(3); }
}

}  // namespace

namespace {

// Whether `weight` is int8_pack's layout ([N / 16, K / 4, 16, 4] bytes), and the product's N and K
bool packed_shape(const at::Tensor& weight, int64_t& N, int64_t& K) {
  const bool packed = weight.dim() == 4;
  N = packed ? weight.size(0) * 16 : weight.size(0);
  K = packed ? weight.size(1) * 4 : weight.size(1);
  return packed;
}

// out [M, N] = x [M, K] times the int8 weight [N, K] (its rows scaled), in bfloat16, or widened to float32.
// With AVX-512 VNNI and no AMX the weight may be int8_pack's copy of it (else it is packed for this call).
template <typename OUT>
at::Tensor int8_product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.device().is_cpu(), name,
              ": x must be a contiguous 2-D bfloat16 CPU tensor");
  int64_t N = 0, K = 0;
  const bool packed_weight = packed_shape(weight, N, K);
  TORCH_CHECK(((weight.dim() == 2 && weight.scalar_type() == at::kChar) ||
               (packed_weight && weight.scalar_type() == at::kByte && weight.size(2) == 16 && weight.size(3) == 4)) &&
                  weight.is_contiguous() && scales.scalar_type() == at::kBFloat16 && scales.is_contiguous() &&
                  scales.numel() == N,
              name, ": weight must be contiguous [N, K] int8 (or int8_pack's copy) with [N] bfloat16 scales");
  const int64_t M = x.size(0);
  TORCH_CHECK(x.size(1) == K && K % TILE_K == 0 && N % 16 == 0, name,
              ": needs K % 32 == 0, N % 16 == 0 and x's K to match the weight's");
  const bool amx = amx_granted();  // else the AVX-512 paths, which read the rows as they are
  // without AMX, inputs rounded to int8 and the weights in tiles (int8_vnni.cpp), for every row count
  const bool vnni = !amx && uses_vnni();
  TORCH_CHECK(vnni || !packed_weight, name, ": int8_pack's layout is for the AVX-512 VNNI path (uses_vnni())");
  at::Tensor out = at::empty({M, N}, x.options().dtype(sizeof(OUT) == 2 ? at::kBFloat16 : at::kFloat));
  if (M == 0 || N == 0) return out;
  const auto* a = reinterpret_cast<const bf16_t*>(x.const_data_ptr());
  const auto* w = reinterpret_cast<const int8_t*>(weight.const_data_ptr());
  const auto* s = reinterpret_cast<const bf16_t*>(scales.const_data_ptr());
  auto* c = reinterpret_cast<OUT*>(out.data_ptr());
  const int64_t groups = K / 32;  // the inputs' groups of int8_vnni.cpp
  thread_local std::vector<int8_t> quantized;
  thread_local std::vector<float> group_scales;
  thread_local std::vector<int32_t> group_offsets;  // -128 x each group's code sum
  at::Tensor tiles;  // a [N, K] weight packed for this call (int8_pack's layout; freed after it)
  const uint8_t* wt = reinterpret_cast<const uint8_t*>(w);
  if (vnni) {
    quantized.resize(std::max<size_t>(quantized.size(), M * K));
    group_scales.resize(std::max<size_t>(group_scales.size(), M * groups));
    group_offsets.resize(std::max<size_t>(group_offsets.size(), M * groups));
    int8_t* const xq = quantized.data();
    float* const dq = group_scales.data();
    int32_t* const offsets = group_offsets.data();
    over_rows_if_many(M, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int32_t* q = offsets + r * groups;
        int4::quantize_row(a + r * K, static_cast<int>(K), 32, xq + r * K, dq + r * groups, q);
        for (int64_t g = 0; g < groups; ++g) q[g] *= -128;  // where each group's sum starts (int8_vnni.cpp)
      }
    });
    if (!packed_weight) {
      tiles = at::empty({N * K}, weight.options().dtype(at::kByte));
      int8::pack_vnni(w, N, static_cast<int>(K), tiles.data_ptr<uint8_t>());
      wt = tiles.const_data_ptr<uint8_t>();
    }
  }
  // (the workers of the loop below see other threads' thread_locals: they get these pointers)
  const int8_t* xq = quantized.data();
  const float* dq = group_scales.data();
  const int32_t* oq = group_offsets.data();
  const int64_t panels = (M + AMX_ROWS - 1) / AMX_ROWS;
  thread_local std::vector<bf16_t> packed;  // every panel's B tiles, each [K / 32][16][rows][2] (AMX)
  if (amx) packed.resize(std::max<size_t>(packed.size(), M * K));
  bf16_t* pk = packed.data();
  for (int64_t p = 0; amx && p < panels; ++p) {
    const int rows = static_cast<int>(std::min<int64_t>(AMX_ROWS, M - p * AMX_ROWS));
    pack_rows(a + p * AMX_ROWS * K, static_cast<int>(K), rows, pk + p * AMX_ROWS * K);
  }
  const int64_t blocks = (N + BLOCK_N - 1) / BLOCK_N;
  parallel_for(blocks * panels, [&](int64_t begin, int64_t end) {
    int configured = -1;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t nb = i % blocks, p = i / blocks;
      const int64_t n0 = nb * BLOCK_N;
      const int tiles = static_cast<int>(std::min<int64_t>(BLOCK_N, N - n0) / 16);
      const int rows = static_cast<int>(std::min<int64_t>(AMX_ROWS, M - p * AMX_ROWS));
      const bf16_t* pp = pk + p * AMX_ROWS * K;
      const int8_t* wp = w + n0 * K;
      OUT* cp = c + p * AMX_ROWS * N + n0;
      const int k = static_cast<int>(K), ldc = static_cast<int>(N);
      if (vnni) {
        const int64_t r0 = p * AMX_ROWS;
        int8::vnni_block(xq + r0 * K, k, rows, dq + r0 * groups, oq + r0 * groups, wt + n0 * K, s + n0, cp, ldc,
                         16 * tiles);
        continue;
      }
      if (!amx) {
        int8::avx512_block(a + p * AMX_ROWS * K, k, rows, wp, s + n0, cp, ldc, 16 * tiles);
        continue;
      }
      switch (tiles) {
        case 4: block<4>(pp, rows, wp, s + n0, cp, ldc, k, configured); break;
        case 3: block<3>(pp, rows, wp, s + n0, cp, ldc, k, configured); break;
        case 2: block<2>(pp, rows, wp, s + n0, cp, ldc, k, configured); break;
        default: block<1>(pp, rows, wp, s + n0, cp, ldc, k, configured); break;
      }
    }
    if (amx) _tile_release();
  });
  return out;
}

}  // namespace

// The op: AMX tiles where the OS grants them, else the AVX-512 BF16 path (a constant of the process).
at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales) {
  return int8_product<bf16_t>(x, weight, scales, "swift_kernels::int8_mm");
}

// The same product widened to float32 as it is written: `int8_mm(x, weight, scales).float()` without
// the second pass over [M, N] (an output head's logits: 16 x 49152 values are ~0.3 ms to widen)
at::Tensor int8_mm_float(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales) {
  return int8_product<float>(x, weight, scales, "swift_kernels::int8_mm_float");
}

// The int8 weight [N, K] in the VNNI path's layout ([N / 16, K / 4, 16, 4] unsigned bytes w + 128;
// int8_vnni.cpp), which int8_mm takes in its place: a copy that int8_mm would otherwise make per call.
at::Tensor int8_pack(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous() &&
                  weight.size(0) % 16 == 0 && weight.size(1) % TILE_K == 0,
              "swift_kernels::int8_pack: weight must be contiguous [N, K] int8 with N % 16 == 0, K % 32 == 0");
  const int64_t N = weight.size(0), K = weight.size(1);
  at::Tensor packed = at::empty({N / 16, K / 4, 16, 4}, weight.options().dtype(at::kByte));
  int8::pack_vnni(weight.const_data_ptr<int8_t>(), N, static_cast<int>(K), packed.data_ptr<uint8_t>());
  return packed;
}

}  // namespace swift_kernels
