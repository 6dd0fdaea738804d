// Weight-only int4 products on AMX tiles whose cost is nearly flat in the rows (1..16 per pass).
//
// Why (docs/bench/measurements.md#native-kernels): PyTorch's CPU kernel aten::_weight_int4pack_mm_for_cpu
// works in blocks of 4 rows and dequantizes every weight tile again for each block, so a pass of k
// rows costs about ceil(k/4) one-row passes and verifying a speculative draft stops being cheap.
//
// How: the codes go to the tiles as exact bfloat16 values (128 + q: one OR), and each group's scale
// and zero are applied afterwards, per output:
//   sum_k a[k] * ((q[k] - 8) * s + z) = s * sum_k a[k] * (128 + q[k]) + (z - 136 s) * sum_k a[k]
// so a group of 32 inputs x 64 columns costs one pass of byte shuffles (no float dequantization) and
// four TDPBF16PS, which multiply up to 16 rows at once.
//
// Bits: a row's result depends only on that row and the weights, never on how many rows share the
// pass or where the row sits: tiles compute rows independently, the order over K is fixed (group
// after group, each group's tile sum added in float32 as s * part + z * sum), row sums run in one
// fixed order, and every row count takes this same path (row-invariant by construction; checked by
// tests/test_native_kernels.py and at engine start). It is not bitwise PyTorch's kernel, which
// dequantizes in float32 first: outputs agree to bfloat16 rounding.
//
// Operands are aten's own, so the fallback needs no second copy: the packed weight of
// aten::_convert_weight_to_int4pack_for_cpu (blocks of 64 output columns; byte j of input row k
// holds column j in its low nibble and column j + 32 in its high one; a last partial block of
// 16/32/48 columns holds column pairs (low, high)), scales and zeros [K / group, N, 2] bfloat16,
// activations [M, K] bfloat16.
//
// Built on the user's machine by swift_engine/kernels/native_build.py (with the other sources here;
// ops.cpp registers the ops) and loaded on a CPU with AVX-512 BF16; the tiles run where the OS grants
// them, int4_avx512.cpp's vector path elsewhere (the op below picks, once per process).

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
namespace {

using namespace int4;

// The tile shapes for passes of `rows` rows, loaded unless `configured` (this thread, this call) has them.
// (Never kept across calls: other code on the thread, oneDNN's AMX kernels, loads its own shapes.)
inline void configure_tiles(int rows, int& configured) {
  if (configured == rows) return;
  TileConfig cfg;
  for (int t = 0; t < 4; ++t) { cfg.rows[t] = static_cast<uint8_t>(rows); cfg.colsb[t] = 64; }  // C: rows x 16 fp32
  cfg.rows[4] = static_cast<uint8_t>(rows); cfg.colsb[4] = 64;                                    // A: rows x 32 bf16
  for (int t = 5; t < 8; ++t) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }                            // B: 16 pairs x 16
  load_tile_config(cfg);
  configured = rows;
}

// A 64-column block (COLS x 16 of it) of `rows` rows: per group, its tile sums, then
// acc = acc + part * s, acc = acc + sum(a) * (z - 136 s), group after group. REG_ROWS > 0: the
// block's running sums stay in registers (rows == REG_ROWS <= 4) rather than going through memory
// every group -- the same operations in the same order, hence the same bits.
template <int COLS, int REG_ROWS>
void tile_amx(const bf16_t* a, int lda, int rows, const float* sums, const uint8_t* b, const bf16_t* sz, int ldsz,
              bf16_t* out, int ldc, int K, int group, int& configured) {
  alignas(64) bf16_t tiles[4 * 512];
  alignas(64) float parts[2][AMX_ROWS * BLOCK_N];  // two groups' tile sums, [rows][64] each
  alignas(64) float acc[AMX_ROWS * BLOCK_N];       // the running output, [rows][64] (REG_ROWS == 0)
  __m512 reg[REG_ROWS > 0 ? REG_ROWS : 1][COLS];
  configure_tiles(rows, configured);
  if constexpr (REG_ROWS > 0) {
    for (int r = 0; r < REG_ROWS; ++r)
      for (int c = 0; c < COLS; ++c) reg[r][c] = _mm512_setzero_ps();
  } else {
    for (int i = 0; i < rows * BLOCK_N; i += 16) _mm512_store_ps(acc + i, _mm512_setzero_ps());
  }
  const int row_bytes = COLS * 8;
  const int groups = K / group;
  // group g's tile sums into the running output:
  //   sum_k a (q - 8) s + a z  =  s * sum_k a (128 + q)  +  (z - 136 s) * sum_k a
  auto add_group = [&](int g, const float* part) {
    __m512 scale[COLS], zero[COLS];
    load_scales<COLS>(sz + g * ldsz, scale, zero);
    for (int c = 0; c < COLS; ++c) zero[c] = _mm512_fnmadd_ps(_mm512_set1_ps(ZERO_SHIFT), scale[c], zero[c]);
    if constexpr (REG_ROWS > 0) {
      for (int r = 0; r < REG_ROWS; ++r) {
        const __m512 total = _mm512_set1_ps(sums[r * groups + g]);
        for (int c = 0; c < COLS; ++c) {
          const __m512 v = _mm512_fmadd_ps(_mm512_load_ps(part + r * BLOCK_N + 16 * c), scale[c], reg[r][c]);
          reg[r][c] = _mm512_fmadd_ps(total, zero[c], v);
        }
      }
    } else {
      for (int r = 0; r < rows; ++r) {
        const __m512 total = _mm512_set1_ps(sums[r * groups + g]);
        for (int c = 0; c < COLS; ++c) {
          float* o = acc + r * BLOCK_N + 16 * c;
          const __m512 v = _mm512_fmadd_ps(_mm512_load_ps(part + r * BLOCK_N + 16 * c), scale[c], _mm512_load_ps(o));
          _mm512_store_ps(o, _mm512_fmadd_ps(total, zero[c], v));
        }
      }
    }
  };
  for (int g = 0; g < groups; ++g) {
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int k0 = g * group; k0 < (g + 1) * group; k0 += TILE_K) {
      // the tile step after next: the weights stream from memory, a step's compute hides its fetch
      if (k0 + 2 * TILE_K < K)
        for (int line = 0; line < TILE_K * row_bytes; line += 64)
          _mm_prefetch(reinterpret_cast<const char*>(b + (k0 + 2 * TILE_K) * row_bytes + line), _MM_HINT_T0);
      if constexpr (COLS == 4) block_codes(b + k0 * row_bytes, tiles);
      else partial_codes<COLS>(b + k0 * row_bytes, tiles);
      _tile_loadd(4, a + k0, lda * 2);
      _tile_loadd(5, tiles, 64);
      _tile_dpbf16ps(0, 4, 5);
      if constexpr (COLS > 1) { _tile_loadd(6, tiles + 512, 64); _tile_dpbf16ps(1, 4, 6); }
      if constexpr (COLS > 2) { _tile_loadd(7, tiles + 1024, 64); _tile_dpbf16ps(2, 4, 7); }
      if constexpr (COLS > 3) { _tile_loadd(5, tiles + 1536, 64); _tile_dpbf16ps(3, 4, 5); }
    }
    // the last group's sums, written a group ago, are read only now: its tile stores have landed
    // while this group's codes were unpacked, so the reads do not wait on them
    if (g > 0) add_group(g - 1, parts[(g - 1) & 1]);
    float* part = parts[g & 1];
    _tile_stored(0, part, BLOCK_N * 4);
    if constexpr (COLS > 1) _tile_stored(1, part + 16, BLOCK_N * 4);
    if constexpr (COLS > 2) _tile_stored(2, part + 32, BLOCK_N * 4);
    if constexpr (COLS > 3) _tile_stored(3, part + 48, BLOCK_N * 4);
  }
  add_group(groups - 1, parts[(groups - 1) & 1]);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < COLS; ++c) {
      __m512 v;
      if constexpr (REG_ROWS > 0) v = reg[r][c];
      else v = _mm512_load_ps(acc + r * BLOCK_N + 16 * c);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ldc + 16 * c), to_bf16(v));
    }
}

// tile_amx for a block of `cols` (16..64) columns and `rows` rows: registers for the running sums
// where the rows fit them
template <int COLS>
void tile_any_rows(const bf16_t* a, int lda, int rows, const float* sums, const uint8_t* b, const bf16_t* sz,
                   int ldsz, bf16_t* out, int ldc, int K, int group, int& configured) {
  switch (rows) {
    case 1: tile_amx<COLS, 1>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group, configured); break;
    case 2: tile_amx<COLS, 2>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group, configured); break;
    case 3: tile_amx<COLS, 3>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group, configured); break;
    case 4: tile_amx<COLS, 4>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group, configured); break;
    default: tile_amx<COLS, 0>(a, lda, rows, sums, b, sz, ldsz, out, ldc, K, group, configured); break;
  }
}

}  // namespace

// The op: AMX tiles where the OS grants them, else int8 activations on AVX-512 VNNI (int4_vnni.cpp;
// SWIFT_NATIVE_VNNI=0: bfloat16 activations, int4_avx512.cpp); which is a constant of the process, so
// every pass of a run takes the same one.
at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& packed, int64_t group, const at::Tensor& scales_zeros) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.device().is_cpu(),
              "swift_kernels::int4_mm: x must be a contiguous 2-D bfloat16 CPU tensor");
  TORCH_CHECK(scales_zeros.dim() == 3 && scales_zeros.scalar_type() == at::kBFloat16 && scales_zeros.is_contiguous(),
              "swift_kernels::int4_mm: scales_zeros must be a contiguous [K/group, N, 2] bfloat16 tensor");
  const int64_t M = x.size(0), K = x.size(1), N = scales_zeros.size(1);
  TORCH_CHECK(group % TILE_K == 0 && group <= MAX_GROUP && K % group == 0 && scales_zeros.size(0) == K / group &&
                  scales_zeros.size(2) == 2,
              "swift_kernels::int4_mm: K must be a multiple of the group size (32..256) and match scales_zeros");
  TORCH_CHECK(N % 16 == 0 && packed.is_contiguous() && packed.numel() * packed.element_size() == N * K / 2,
              "swift_kernels::int4_mm: packed weight does not match N x K");
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const auto* a = reinterpret_cast<const bf16_t*>(x.const_data_ptr());
  const auto* b = reinterpret_cast<const uint8_t*>(packed.const_data_ptr());
  const auto* sz = reinterpret_cast<const bf16_t*>(scales_zeros.const_data_ptr());
  auto* c = reinterpret_cast<bf16_t*>(out.data_ptr());
  const int64_t blocks = (N + BLOCK_N - 1) / BLOCK_N;
  const int64_t panels = (M + AMX_ROWS - 1) / AMX_ROWS;
  const int64_t groups = K / group;
  // each row's input sum per group (the zero points' term), once for every column block
  // (in the calling thread's buffers, kept: a step makes ~200 products, and allocating tensors for
  // them cost SmolLM2's int4 step ~0.7 ms on the Zen 4 VM)
  thread_local std::vector<float> row_sums;
  row_sums.resize(std::max<size_t>(row_sums.size(), M * groups));
  float* sums = row_sums.data();
  const bool amx = amx_granted(), vnni = uses_vnni();
  // the int8-activation path: every row's inputs quantized once, for every column block
  thread_local std::vector<int8_t> quantized;
  thread_local std::vector<float> group_scales;
  thread_local std::vector<int32_t> group_qsums;
  if (vnni) {
    quantized.resize(std::max<size_t>(quantized.size(), M * K));
    group_scales.resize(std::max<size_t>(group_scales.size(), M * groups));
    group_qsums.resize(std::max<size_t>(group_qsums.size(), M * groups));
  }
  int8_t* xq = quantized.data();
  float* dq = group_scales.data();
  int32_t* qs = group_qsums.data();
  // each row's group sums (and int8 inputs): the same per row however the rows are shared out
  over_rows_if_many(M, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t g = 0; g < groups; ++g) sums[r * groups + g] = row_sum(a + r * K + g * group, static_cast<int>(group));
      if (vnni)
        quantize_row(a + r * K, static_cast<int>(K), static_cast<int>(group), xq + r * K, dq + r * groups, qs + r * groups);
    }
  });
  parallel_for(blocks * panels, [&](int64_t begin, int64_t end) {
    int configured = -1;
    __m512i* codes = vnni ? codes_buffer() : nullptr;  // (one look-up of a thread-local a piece, not a block)
    for (int64_t i = begin; i < end; ++i) {
      const int64_t nb = i % blocks, mp = i / blocks;
      const int n0 = static_cast<int>(nb * BLOCK_N), cols = static_cast<int>(std::min<int64_t>(BLOCK_N, N - n0));
      const int m0 = static_cast<int>(mp * AMX_ROWS), rows = static_cast<int>(std::min<int64_t>(AMX_ROWS, M - m0));
      const bf16_t* ap = a + m0 * K;
      const uint8_t* bp = b + static_cast<int64_t>(n0) * K / 2;
      const bf16_t* sp = sz + n0 * 2;
      bf16_t* cp = c + m0 * N + n0;
      const int ldsz = static_cast<int>(N * 2);
      const float* rs = sums + m0 * groups;
      if (vnni && cols == BLOCK_N) {
        vnni_block(xq + m0 * K, K, rows, dq + m0 * groups, qs + m0 * groups, rs, bp, sp, ldsz, cp, N, K, group, codes);
        continue;
      }
      if (!amx) {  // (with vnni: a partial last block, 16..48 columns, for every row count)
        avx512_block(cols, ap, K, rows, rs, bp, sp, ldsz, cp, N, K, group);
        continue;
      }
      switch (cols / 16) {
        case 4: tile_any_rows<4>(ap, K, rows, rs, bp, sp, ldsz, cp, N, K, group, configured); break;
        case 3: tile_any_rows<3>(ap, K, rows, rs, bp, sp, ldsz, cp, N, K, group, configured); break;
        case 2: tile_any_rows<2>(ap, K, rows, rs, bp, sp, ldsz, cp, N, K, group, configured); break;
        default: tile_any_rows<1>(ap, K, rows, rs, bp, sp, ldsz, cp, N, K, group, configured); break;
      }
    }
    if (amx) _tile_release();
  });
  return out;
}

}  // namespace swift_kernels
