// Attention of a pass's query rows, each over its own visible keys, in one call: a row's bits are
// those of the same row attended alone (a one-token step), whatever else shares the pass.
//
// Why (docs/bench/measurements.md#native-kernels): exact greedy SWIFT needs a verification row to
// be bitwise its one-token step. PyTorch's fused CPU attention does not promise that across query
// counts, so kernels/row_attention.py attends row by row: one scaled_dot_product_attention call per
// row and layer, which made attention the largest part of a verification pass of 8 rows once the
// weight-only products became flat in the rows.
//
// How, per key head: scores of every query (rows x the query heads that share the key head) against
// the keys the rows see are one tile product, keys as the A tiles straight from the cache (16 keys x
// 32 dims; bfloat16 already) and the queries packed once as the B tile (without AMX, vector_scores:
// one VDPBF16PS chain per key, stored query-major). Each score depends on its key and its query only.
// Then, per query, in float32 and over the row's own keys in the row's own order (its cached prefix,
// then its ancestors): scale, max, exp, sum, and the probability-weighted sum of the values -- the same
// sequence of operations for a row whether it is alone or one of many, hence the same bits.
//
// Operands: query [R, H, d] bfloat16; key and value: [KVH, T, d] / [KVH, T, dv] bfloat16 views of the
// cache (last dim contiguous); index [R, L] int32: row r's keys are index[r, :lengths[r]] (positions
// in T); H % KVH == 0, d % 16 == 0. Output [R, H, dv] bfloat16.

#include "pool.h"
#include "tiles.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

namespace swift_kernels {
namespace {

// e^x for float32 lanes: Cody-Waite range reduction and a degree-6 polynomial (one fixed sequence
// of operations: the same input gives the same bits in any lane and any call)
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __m512 bf16x16(const bf16_t* p) { return load_bf16(p); }

// Whether keys[0..n) are one run k, k + 1, ... (a prompt's row, a one-token step; a tree's rows past
// their trunk are not).
bool consecutive(const int32_t* keys, int n) {
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  int j = 0;
  for (; j + 16 <= n; j += 16)
    if (_mm512_cmpneq_epi32_mask(_mm512_loadu_si512(keys + j), _mm512_add_epi32(_mm512_set1_epi32(keys[0] + j), iota)))
      return false;
  for (; j < n; ++j)
    if (keys[j] != keys[0] + j) return false;
  return true;
}

// One query's softmax over its scores `from[0..n)` (in the row's key order) into `scores[0..n)` (may be
// `from`), in float32: scale, max, exp; returns 1 / (the sum of the exps).
float softmax(const float* from, float* scores, int n, float scale) {
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(from + j), vscale);
    _mm512_storeu_ps(scores + j, s);
    vmax = _mm512_max_ps(vmax, s);
  }
  const __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
  if (n > j) {
    const __m512 s = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, from + j), vscale);
    _mm512_mask_storeu_ps(scores + j, tail, s);
    vmax = _mm512_mask_max_ps(vmax, tail, vmax, s);
  }
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (j = 0; j + 16 <= n; j += 16) {
    const __m512 p = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(scores + j), m));
    _mm512_storeu_ps(scores + j, p);
    vsum = _mm512_add_ps(vsum, p);
  }
  if (n > j) {
    const __m512 p = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, scores + j), m));
    _mm512_mask_storeu_ps(scores + j, tail, p);
    vsum = _mm512_mask_add_ps(vsum, tail, vsum, p);
  }
  return 1.0f / _mm512_reduce_add_ps(vsum);
}

// The outputs (dv = 16 CH) of NG query heads that share a key head and a row, hence its keys: per
// head, sum_j p[j] * values[idx[j]] in float32, in j order, times 1 / sum. Each value row is read and
// converted once for the NG heads; every head's sequence of operations is the one-head loop's.
template <int CH, int NG>
void weighted_values(const float* const* p, int n, const bf16_t* values, int64_t vstride, const int32_t* idx,
                     const float* inv, bf16_t* const* out) {
  __m512 acc[NG][CH];
  for (int g = 0; g < NG; ++g)
    for (int c = 0; c < CH; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int j = 0; j < n; ++j) {
    const bf16_t* v = values + idx[j] * vstride;
    __m512 row[CH];
    for (int c = 0; c < CH; ++c) row[c] = bf16x16(v + 16 * c);
    for (int g = 0; g < NG; ++g) {
      const __m512 pj = _mm512_set1_ps(p[g][j]);
      for (int c = 0; c < CH; ++c) acc[g][c] = _mm512_fmadd_ps(pj, row[c], acc[g][c]);
    }
  }
  for (int g = 0; g < NG; ++g)
    for (int c = 0; c < CH; ++c)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[g] + 16 * c),
                          to_bf16(_mm512_mul_ps(acc[g][c], _mm512_set1_ps(inv[g]))));
}

// One head's output for any dv (a multiple of 16 up to 256): the same operations, one head at a time.
void weighted_values_any(const float* p, int n, const bf16_t* values, int64_t vstride, const int32_t* idx, int dv,
                         float inv, bf16_t* out) {
  constexpr int MAX_DV = 256;
  __m512 acc[MAX_DV / 16];
  const int chunks = dv / 16;
  for (int c = 0; c < chunks; ++c) acc[c] = _mm512_setzero_ps();
  for (int j = 0; j < n; ++j) {
    const __m512 pj = _mm512_set1_ps(p[j]);
    const bf16_t* v = values + idx[j] * vstride;
    for (int c = 0; c < chunks; ++c) acc[c] = _mm512_fmadd_ps(pj, bf16x16(v + 16 * c), acc[c]);
  }
  for (int c = 0; c < chunks; ++c)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * c), to_bf16(_mm512_mul_ps(acc[c], _mm512_set1_ps(inv))));
}

// The G heads of one row and key head: values shared by up to 4 heads (dv 64) or 2 (dv 128) per
// pass over the keys, never fewer than 3 accumulating at once where G allows (one head alone waits on
// its own additions: four chains of fused adds are too few to keep the vector units busy).
void heads_values(const float* const* p, int G, int n, const bf16_t* values, int64_t vstride, const int32_t* idx,
                  int dv, const float* inv, bf16_t* const* out) {
  int g = 0;
  if (dv == 64) {
    for (; G - g >= 4 && G - g != 5; g += 4) weighted_values<4, 4>(p + g, n, values, vstride, idx, inv + g, out + g);
    for (; G - g >= 3 && G - g != 4; g += 3) weighted_values<4, 3>(p + g, n, values, vstride, idx, inv + g, out + g);
    for (; g + 2 <= G; g += 2) weighted_values<4, 2>(p + g, n, values, vstride, idx, inv + g, out + g);
  } else if (dv == 128) {
    for (; g + 2 <= G; g += 2) weighted_values<8, 2>(p + g, n, values, vstride, idx, inv + g, out + g);
  }
  for (; g < G; ++g) weighted_values_any(p[g], n, values, vstride, idx, dv, inv[g], out[g]);
}

// A 16 x 16 block of float32 in registers, transposed in place (r[i][j] <-> r[j][i]): pairs of rows
// interleaved by words, then by pairs of words, then 128-bit lanes exchanged twice.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), e = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  // now every 128-bit lane of r[4q..4q+3] holds one 4 x 4 block of rows 4q..4q+3, transposed: the
  // lane exchanges put block (q, l) in rows 4l..4l+3, lane q
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// Without AMX: the same scores as the tile product, key by key -- one VDPBF16PS chain over the dim
// pairs in order per key, four keys at a time (four chains in flight), for the n queries of the B-tile
// words qt32 ([d / 2][n]) and keys lo <= j < hi. Each score depends on its key and its query only, as
// the tiles' do. Stored query-major, scores[c * ld + (j - lo)], 16 keys at a time transposed in
// registers: a row's softmax then reads its scores as they lie, where the tiles' key-major layout puts
// each in a line of its own (a long prompt's block: ~1.2k lines per row and head, from L3; this kernel
// 0.80x on a 128-row block over 1.2k keys, Zen 4).
void vector_scores(const bf16_t* kh, int64_t ks1, int lo, int hi, int d, const uint32_t* qt32, int n, float* scores,
                   int64_t ld) {
  const __mmask16 lanes = static_cast<__mmask16>((1u << n) - 1);
  for (int b0 = lo; b0 < hi; b0 += 16) {
    const int block = std::min(16, hi - b0);
    __m512 blk[16];
    for (int j0 = b0; j0 < b0 + 16; j0 += 4) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      const uint32_t* kw[4];
      for (int u = 0; u < 4; ++u) kw[u] = reinterpret_cast<const uint32_t*>(kh + std::min(j0 + u, hi - 1) * ks1);
      for (int w = 0; w < d / 2; ++w) {
        const __m512bh qv = reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi32(lanes, qt32 + w * n));
        for (int u = 0; u < 4; ++u)
          acc[u] = dpbf16(acc[u], reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(kw[u][w]))), qv);
      }
      for (int u = 0; u < 4; ++u) blk[j0 - b0 + u] = acc[u];
    }
    transpose16(blk);  // blk[c]: query c's scores of the block's keys
    const __mmask16 keys = static_cast<__mmask16>((1u << block) - 1);
    for (int c = 0; c < n; ++c) _mm512_mask_storeu_ps(scores + c * ld + (b0 - lo), keys, blk[c]);
  }
}

}  // namespace

at::Tensor rows_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& index, const at::Tensor& lengths, double scale) {
  TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && value.dim() == 3 && query.scalar_type() == at::kBFloat16 &&
                  key.scalar_type() == at::kBFloat16 && value.scalar_type() == at::kBFloat16,
              "swift_kernels::rows_attention: query [R, H, d], key [KVH, T, d], value [KVH, T, dv] in bfloat16");
  TORCH_CHECK(query.is_contiguous() && key.stride(2) == 1 && value.stride(2) == 1,
              "swift_kernels::rows_attention: contiguous query; keys and values contiguous in their last dim");
  TORCH_CHECK(index.dim() == 2 && index.scalar_type() == at::kInt && index.is_contiguous() &&
                  lengths.scalar_type() == at::kInt && lengths.numel() == query.size(0) && index.size(0) == query.size(0),
              "swift_kernels::rows_attention: index [R, L] and lengths [R] int32");
  const int R = static_cast<int>(query.size(0)), H = static_cast<int>(query.size(1)), d = static_cast<int>(query.size(2));
  const int KVH = static_cast<int>(key.size(0)), T = static_cast<int>(key.size(1)), dv = static_cast<int>(value.size(2));
  TORCH_CHECK(KVH > 0 && H % KVH == 0 && d % 16 == 0 && d <= 256 && dv % 16 == 0 && dv <= 256 &&
                  key.size(2) == d && value.size(0) == KVH && value.size(1) >= T,
              "swift_kernels::rows_attention: needs H % KVH == 0, head dims multiples of 16 up to 256");
  const int G = H / KVH, L = static_cast<int>(index.size(1));
  const int32_t* idx = index.const_data_ptr<int32_t>();
  const int32_t* len = lengths.const_data_ptr<int32_t>();
  // each row's key span [row_lo, row_hi); rows whose spans overlap are scored together (a tree's rows
  // all do), rows of different sequences in one pass (each over its own region of the cache) apart:
  // a score is the same dot product whichever block computes it, so the grouping changes no bits
  std::vector<int> row_lo(R, T), row_hi(R, 0);
  for (int r = 0; r < R; ++r) {  // (16 keys an instruction: a prompt block's rows see ~1k keys each)
    TORCH_CHECK(len[r] >= 1 && len[r] <= L, "swift_kernels::rows_attention: lengths out of range");
    const int32_t* keys = idx + static_cast<size_t>(r) * L;
    __m512i lo16 = _mm512_set1_epi32(T), hi16 = _mm512_set1_epi32(-1);
    for (int j = 0; j < len[r]; j += 16) {
      const __mmask16 m = static_cast<__mmask16>(len[r] - j >= 16 ? 0xFFFF : (1u << (len[r] - j)) - 1);
      lo16 = _mm512_mask_min_epi32(lo16, m, lo16, _mm512_maskz_loadu_epi32(m, keys + j));
      hi16 = _mm512_mask_max_epi32(hi16, m, hi16, _mm512_maskz_loadu_epi32(m, keys + j));
    }
    row_lo[r] = _mm512_reduce_min_epi32(lo16);
    row_hi[r] = _mm512_reduce_max_epi32(hi16) + 1;
    TORCH_CHECK(row_lo[r] >= 0 && row_hi[r] <= T, "swift_kernels::rows_attention: index out of range");
  }
  at::Tensor out = at::empty({R, H, dv}, query.options());
  const auto* q = reinterpret_cast<const bf16_t*>(query.const_data_ptr());
  const auto* k = reinterpret_cast<const bf16_t*>(key.const_data_ptr());
  const auto* v = reinterpret_cast<const bf16_t*>(value.const_data_ptr());
  auto* o = reinterpret_cast<bf16_t*>(out.data_ptr());
  const int64_t ks0 = key.stride(0), ks1 = key.stride(1), vs0 = value.stride(0), vs1 = value.stride(1);
  const float fscale = static_cast<float>(scale);
  const int dpad = (d + 31) / 32 * 32, steps = dpad / 32;
  // Groups of rows whose key spans overlap (a tree's rows all do; rows of different sequences in one
  // pass, each over its own region of the cache, do not): a group's scores are one tile product per
  // key head over its span. Every group's tiles go in one parallel loop, then every row's softmax and
  // values in another -- two hand-offs to the workers per call, however many sequences share the pass.
  struct Group {
    int r0, r1, lo, hi, blocks, cols, chunks;
    size_t offset;  // of its scores: float32 [KVH, blocks * 16, cols] key-major (as tiles store them),
                    // or [KVH, cols, blocks * 16] query-major (vector_scores)
  };
  std::vector<Group> groups;
  std::vector<int> group_of(R);
  size_t total = 0;
  for (int r0 = 0; r0 < R;) {
    int r1 = r0 + 1, lo = row_lo[r0], hi = row_hi[r0];
    while (r1 < R && row_lo[r1] < hi && row_hi[r1] > lo) {
      lo = std::min(lo, row_lo[r1]);
      hi = std::max(hi, row_hi[r1]);
      ++r1;
    }
    const int blocks = (hi - lo + 15) / 16, cols = (r1 - r0) * G;  // column c: row r0 + c / G, head c % G
    groups.push_back({r0, r1, lo, hi, blocks, cols, (cols + 15) / 16, total});
    for (int r = r0; r < r1; ++r) group_of[r] = static_cast<int>(groups.size()) - 1;
    total += static_cast<size_t>(KVH) * blocks * 16 * cols;
    r0 = r1;
  }
  const bool amx = amx_granted();  // else the scores are VDPBF16PS chains (vector_scores)
  // where a score lies: query-major without AMX (vector_scores), key-major as the tiles store it
  const bool by_query = !amx;
  std::vector<std::array<int, 3>> items;  // (group, key head, first column) of each tile job
  for (int gi = 0; gi < static_cast<int>(groups.size()); ++gi)
    for (int h = 0; h < KVH; ++h)
      for (int c = 0; c < groups[gi].chunks; ++c) items.push_back({gi, h, 16 * c});
  // (left uninitialized: every entry a row reads is written by a tile store first)
  const std::unique_ptr<float[]> scores_buffer(new float[total]);
  float* const scores_data = scores_buffer.get();
  parallel_for(static_cast<int64_t>(items.size()), [&](int64_t begin, int64_t end) {
    alignas(64) bf16_t qt[8 * 16 * 16 * 2];  // B tiles: [steps][16 dim pairs][16 queries][2]
    alignas(64) bf16_t keys[16 * 256];        // a block of keys padded to whole tile steps (tails only)
    int configured = -1;
    for (int64_t item = begin; item < end; ++item) {
      const auto [gi, h, c0] = items[item];
      const Group& grp = groups[gi];
      const int n = std::min(16, grp.cols - c0), lo = grp.lo, hi = grp.hi;
      float* const scores = scores_data + grp.offset;
      // dims (2w, 2w + 1) of query c are the 32-bit word [w][c] of the B tiles: a [n, d / 2] -> [d / 2, n]
      // transpose of words, zeros past d
      auto* qt32 = reinterpret_cast<uint32_t*>(qt);
      for (int i = d / 2 * n; i < dpad / 2 * n; ++i) qt32[i] = 0;
      for (int c = 0; c < n; ++c) {
        const int col = c0 + c, r = grp.r0 + col / G, head = h * G + col % G;
        const auto* qv = reinterpret_cast<const uint32_t*>(q + (static_cast<int64_t>(r) * H + head) * d);
        for (int w = 0; w < d / 2; ++w) qt32[w * n + c] = qv[w];
      }
      if (!amx) {
        vector_scores(k + h * ks0, ks1, lo, hi, d, qt32, n,
                      scores + (static_cast<size_t>(h) * grp.cols + c0) * grp.blocks * 16, grp.blocks * 16);
        continue;
      }
      if (configured != n) {
        TileConfig cfg;
        cfg.rows[0] = 16; cfg.colsb[0] = static_cast<uint16_t>(4 * n);  // C: 16 keys x n queries
        cfg.rows[1] = 16; cfg.colsb[1] = 64;                             // A: 16 keys x 32 dims
        cfg.rows[2] = 16; cfg.colsb[2] = static_cast<uint16_t>(4 * n);  // B: 16 dim pairs x n queries
        load_tile_config(cfg);
        configured = n;
      }
      const bf16_t* kh = k + h * ks0;
      for (int b = 0; b < grp.blocks; ++b) {
        const int j0 = lo + 16 * b, rows = std::min(16, hi - j0);
        const bool direct = rows == 16 && dpad == d;
        if (!direct) {  // a tail block or a head dim short of a tile step: zero-padded copy
          for (int i = 0; i < 16 * dpad; ++i) keys[i] = 0;
          for (int i = 0; i < rows; ++i)
            for (int e = 0; e < d; ++e) keys[i * dpad + e] = kh[(j0 + i) * ks1 + e];
        }
        _tile_zero(0);
        for (int s = 0; s < steps; ++s) {
          if (direct) _tile_loadd(1, kh + j0 * ks1 + 32 * s, static_cast<int>(ks1 * 2));
          else _tile_loadd(1, keys + 32 * s, dpad * 2);
          _tile_loadd(2, qt + s * 16 * n * 2, 4 * n);
          _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, scores + (static_cast<size_t>(h) * grp.blocks * 16 + 16 * b) * grp.cols + c0, grp.cols * 4);
      }
    }
    if (amx) _tile_release();
  });
  parallel_for(static_cast<int64_t>(R) * KVH, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(static_cast<size_t>(G) * L);
    std::vector<const float*> probs(G);
    std::vector<bf16_t*> outs(G);
    std::vector<float> inv(G);
    for (int64_t item = begin; item < end; ++item) {
      const int r = static_cast<int>(item / KVH), h = static_cast<int>(item % KVH), n = len[r];
      const Group& grp = groups[group_of[r]];
      const int32_t* keys = idx + static_cast<size_t>(r) * L;  // the row's keys, in its order
      // a run of keys (a prompt's rows, a one-token step) read query-major: the scores as they lie
      const bool in_place = by_query && consecutive(keys, n);
      const size_t span = static_cast<size_t>(grp.blocks) * 16;
      for (int g = 0; g < G; ++g) {  // query head h * G + g: its scores in the row's key order, softmaxed
        const size_t col = static_cast<size_t>(r - grp.r0) * G + g;
        float* row = rows.data() + static_cast<size_t>(g) * L;
        const float* from = row;
        if (by_query) {
          const float* s = scores_data + grp.offset + (h * grp.cols + col) * span;
          if (in_place) from = s + (keys[0] - grp.lo);
          else
            for (int j = 0; j < n; ++j) row[j] = s[keys[j] - grp.lo];
        } else {
          const float* s = scores_data + grp.offset + h * span * grp.cols + col;
          for (int j = 0; j < n; ++j) row[j] = s[static_cast<size_t>(keys[j] - grp.lo) * grp.cols];
        }
        inv[g] = softmax(from, row, n, fscale);
        probs[g] = row;
        outs[g] = o + (static_cast<int64_t>(r) * H + h * G + g) * dv;
      }
      heads_values(probs.data(), G, n, v + h * vs0, vs1, keys, dv, inv.data(), outs.data());
    }
  });
  return out;
}

}  // namespace swift_kernels
