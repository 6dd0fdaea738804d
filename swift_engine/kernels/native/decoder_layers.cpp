// The decoder layers of a weight-only llama-style pass as one call: the same bits as the TorchScript
// step (model/scripted_step.py `_layers`), with the ~120 small ATen ops per layer between the products
// fused into a handful of loops.
//
// Why (docs/bench/measurements.md#native-layers): on swift's kernels the products of SmolLM2-135M's
// int4 step take about half of it; the other half was the interpreter and ATen's per-op cost around
// them (views, splits, casts, tiny elementwise ops of 576 values), paid ~3500 times a step, and again
// in every verification and draft pass.
//
// Bits: every value is computed by the operations the script performs, in the same order and
// precision, so the result is bitwise the script's (tests/test_scripted_step.py compares them):
//   * bfloat16 elementwise ops (residual adds, the q/k/v bias, rotary's products and sum, the norm's
//     weight, the MLP's gate x up) compute in float32 and round to nearest even once per op, as
//     PyTorch's CPU kernels do;
//   * the RMSNorm's float32 squares are exact products; their mean is summed in the order of ATen's
//     own `mean` (written out, and checked against it at first use; ATen's is called where they
//     differ); 1 / sqrt(var + eps) is correctly rounded, as `rsqrt` is;
//   * SiLU is ATen's bfloat16 kernel written out (Sleef's expf, found in PyTorch's library; checked
//     against ATen's `silu` on every bfloat16 value at first use, ATen's called where they differ);
//   * products and attention are swift's kernels, called directly (int4_amx.cpp, int8_amx.cpp,
//     row_attention.cpp; on AMX tiles or their AVX-512 BF16 paths).
// A row's values depend on that row only, so the pass keeps the kernels' row invariance.
//
// Operands (all bfloat16 but the int codes): as `_layers` takes them; attention is always
// `rows_attention` here (the script's one-row SDPA path stays in the script).

#include "pool.h"
#include "tiles.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/silu.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <dlfcn.h>
#include <optional>
#include <vector>

namespace swift_kernels {

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& packed, int64_t group, const at::Tensor& scales_zeros);
at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales);
at::Tensor rows_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& index, const at::Tensor& lengths, double scale);

namespace {

constexpr int64_t INT8_NATIVE = 2, INT4_NATIVE = 3;  // scripted_step.py's product kinds

// a bfloat16 vector of 16 rounded from float32, back as float32 (the value a bfloat16 op stores)
inline __m512 rounded(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16(v)), 16));
}

inline void store16(bf16_t* p, __m512 v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16(v)); }

// Passes of this many rows or more share their per-row work (norms, rotary, residuals, SiLU) with
// the kernels' workers; below it the hand-off costs more than the work (a step's row is ~1 us).
// A row's values never depend on which thread computes them.
constexpr int64_t SHARED_ROWS = 4;

// fn(r0, r1) over the rows [0, q): on the kernels' workers from SHARED_ROWS rows, else here
template <typename F>
void over_rows(int64_t q, const F& fn) {
  if (q < SHARED_ROWS) {
    fn(int64_t{0}, q);
  } else {
    parallel_for(q, [&](int64_t r0, int64_t r1) { fn(r0, r1); });
  }
}

// out = a + b (bfloat16 [n], n % 16 == 0): one bfloat16 add
void add_into(const bf16_t* a, const bf16_t* b, bf16_t* out, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) store16(out + j, _mm512_add_ps(load_bf16(a + j), load_bf16(b + j)));
}

// `hidden + zeros_like(hidden)`: a skipped sublayer (-0 becomes +0, as the add makes it)
void add_zero(bf16_t* h, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) store16(h + j, _mm512_add_ps(load_bf16(h + j), _mm512_setzero_ps()));
}

// ATen's sum of n contiguous floats (cascade_sum's contiguous inner reduction in SumKernel.cpp:
// `lanes`-wide vector accumulators, four of them interleaved, a cascade of levels for long rows,
// the scalar tail, then the lanes in order, added onto the zero-filled output). Written out so that
// a norm costs no ATen call; `reduction()` checks it against ATen at first use. (Rows shorter than
// a vector take ATen's scalar path, not this: a norm's rows are multiples of 16.)
float aten_row_sum(const float* x, int64_t n, int lanes) {
  constexpr int ILP = 4, LEVELS = 4, MAX_LANES = 16;
  float acc[LEVELS][ILP][MAX_LANES] = {};
  const int64_t vectors = n / lanes, size = vectors / ILP;
  const int64_t ceil_log2 = size <= 1 ? 0 : 64 - __builtin_clzll(static_cast<uint64_t>(size - 1));
  const int64_t power = std::max<int64_t>(4, ceil_log2 / LEVELS), step = int64_t{1} << power, mask = step - 1;
  auto add_vector = [&](float* into, int64_t v) {  // lane-wise float adds: any vector width gives the same bits
    if (lanes == 16) {
      _mm512_storeu_ps(into, _mm512_add_ps(_mm512_loadu_ps(into), _mm512_loadu_ps(x + v * 16)));
    } else if (lanes == 8) {
      _mm256_storeu_ps(into, _mm256_add_ps(_mm256_loadu_ps(into), _mm256_loadu_ps(x + v * 8)));
    } else {
      for (int l = 0; l < lanes; ++l) into[l] += x[v * lanes + l];
    }
  };
  int64_t i = 0;
  while (i + step <= size) {
    for (int64_t j = 0; j < step; ++j, ++i)
      for (int k = 0; k < ILP; ++k) add_vector(acc[0][k], i * ILP + k);
    for (int j = 1; j < LEVELS; ++j) {
      for (int k = 0; k < ILP; ++k)
        for (int l = 0; l < lanes; ++l) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (mask << (j * power))) != 0) break;
    }
  }
  for (; i < size; ++i)
    for (int k = 0; k < ILP; ++k) add_vector(acc[0][k], i * ILP + k);
  for (int j = 1; j < LEVELS; ++j)
    for (int k = 0; k < ILP; ++k)
      for (int l = 0; l < lanes; ++l) acc[0][k][l] += acc[j][k][l];
  for (int64_t v = size * ILP; v < vectors; ++v) add_vector(acc[0][0], v);
  for (int k = 1; k < ILP; ++k)
    for (int l = 0; l < lanes; ++l) acc[0][0][l] += acc[0][k][l];
  float total = 0.0f;
  for (int64_t k = vectors * lanes; k < n; ++k) total += x[k];
  for (int l = 0; l < lanes; ++l) total += acc[0][0][l];
  return 0.0f + total;
}

// How ATen's `mean` over a row of floats is computed here, found once by comparing with ATen itself:
// the vector width of its sum (16 lanes on AVX-512 builds, 8 on AVX2) and whether it divides by n
// or multiplies by 1 / n. lanes == 0: no match found, call ATen's `mean` (slower, same bits).
struct Reduction {
  int lanes = 0;
  bool reciprocal = false;
  float mean(const float* x, int64_t n) const {
    const float sum = aten_row_sum(x, n, lanes);
    return reciprocal ? sum * (1.0f / static_cast<float>(n)) : sum / static_cast<float>(n);
  }
};

const Reduction& reduction() {
  static const Reduction found = [] {
    const int64_t widths[] = {576, 896, 2048, 4096, 8192, 100, 64, 24};  // n >= lanes: the vector path
    std::vector<at::Tensor> rows;
    for (int64_t n : widths) rows.push_back(at::randn({3, n}).square());  // squares, as the norm takes
    for (int lanes : {16, 8})
      for (bool reciprocal : {false, true}) {
        const Reduction candidate{lanes, reciprocal};
        bool same = true;
        for (const at::Tensor& x : rows) {
          const at::Tensor expected = at::mean(x, {-1});
          for (int64_t r = 0; r < x.size(0) && same; ++r)
            same = candidate.mean(x.const_data_ptr<float>() + r * x.size(1), x.size(1)) ==
                   expected.const_data_ptr<float>()[r];
        }
        if (same) return candidate;
      }
    return Reduction{};
  }();
  return found;
}

// ATen's bfloat16 SiLU as its AVX-512 kernel computes it (x / (1 + exp(-x)) in float32 with
// Sleef's expf, rounded once), written out so that the MLP's rows can be shared by the workers
// (ATen's call is one per pass, on one thread). `silu_matches()` checks it against ATen at first
// use; where Sleef's symbol is missing or the bits differ, ATen's own SiLU is called instead.
using ExpF16 = __m512 (*)(__m512);

ExpF16 sleef_exp() {
  static const ExpF16 found = reinterpret_cast<ExpF16>(dlsym(RTLD_DEFAULT, "Sleef_expf16_u10"));
  return found;
}

// up[j] = bf16(bf16(silu(gate[j])) * up[j]) for j in [0, n), n % 16 == 0
void silu_times(const bf16_t* gate, bf16_t* up, int64_t n, ExpF16 exp16) {
  const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
  for (int64_t j = 0; j < n; j += 16) {
    const __m512 g = load_bf16(gate + j);
    const __m512 s = rounded(_mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_xor_ps(g, sign)))));
    store16(up + j, _mm512_mul_ps(s, load_bf16(up + j)));
  }
}

bool silu_matches() {
  static const bool same = [] {
    const ExpF16 exp16 = sleef_exp();
    if (exp16 == nullptr) return false;
    // every bfloat16 value (NaNs and all), as gate x 1
    at::Tensor gate = at::arange(0, 65536, at::kInt).to(at::kShort).view(at::kBFloat16).contiguous();
    const at::Tensor expected = at::silu(gate);
    at::Tensor up = at::ones({65536}, gate.options());
    silu_times(reinterpret_cast<const bf16_t*>(gate.const_data_ptr()), reinterpret_cast<bf16_t*>(up.data_ptr()),
               65536, exp16);
    return std::memcmp(up.const_data_ptr(), expected.const_data_ptr(), 65536 * sizeof(bf16_t)) == 0;
  }();
  return same;
}

// The MLP's up = silu(gate) * up over [q, inner] (inner % 16 == 0), in place
void gated(const at::Tensor& gate, at::Tensor& up) {
  const int64_t q = up.size(0), inner = up.size(1);
  auto* u = reinterpret_cast<bf16_t*>(up.data_ptr());
  if (!silu_matches()) {  // ATen's SiLU over the whole pass, then the product
    const at::Tensor s = at::silu(gate);
    const auto* g = reinterpret_cast<const bf16_t*>(s.const_data_ptr());
    for (int64_t j = 0; j < q * inner; j += 16) store16(u + j, _mm512_mul_ps(load_bf16(g + j), load_bf16(u + j)));
    return;
  }
  const auto* g = reinterpret_cast<const bf16_t*>(gate.const_data_ptr());
  const ExpF16 exp16 = sleef_exp();
  over_rows(q, [&](int64_t r0, int64_t r1) { silu_times(g + r0 * inner, u + r0 * inner, (r1 - r0) * inner, exp16); });
}

// The llama RMSNorm of `hidden` [q, H]: weight * (h * rsqrt(mean(h^2) + eps)).to(bfloat16), h in float32
at::Tensor rms_norm(const at::Tensor& hidden, const at::Tensor& weight, double eps) {
  const int64_t q = hidden.size(0), H = hidden.size(1);
  const auto* x = reinterpret_cast<const bf16_t*>(hidden.const_data_ptr());
  const auto* w = reinterpret_cast<const bf16_t*>(weight.const_data_ptr());
  at::Tensor out = at::empty({q, H}, hidden.options());
  auto* o = reinterpret_cast<bf16_t*>(out.data_ptr());
  const float feps = static_cast<float>(eps);
  auto squares = [&](int64_t r, float* sq) {
    for (int64_t j = 0; j < H; j += 16) {
      const __m512 h = load_bf16(x + r * H + j);
      _mm512_storeu_ps(sq + j, _mm512_mul_ps(h, h));
    }
  };
  auto normalize = [&](int64_t r, float var) {
    const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(var + feps));
    for (int64_t j = 0; j < H; j += 16) {
      const __m512 normed = rounded(_mm512_mul_ps(load_bf16(x + r * H + j), scale));  // .to(bfloat16)
      store16(o + r * H + j, _mm512_mul_ps(load_bf16(w + j), normed));
    }
  };
  const Reduction& sum = reduction();  // (found on this thread: its first use calls ATen)
  if (sum.lanes == 0) {  // ATen's own mean, over all rows at once
    std::vector<float> sq(q * H);
    for (int64_t r = 0; r < q; ++r) squares(r, sq.data() + r * H);
    const at::Tensor mean = at::mean(at::from_blob(sq.data(), {q, H}, at::kFloat), {-1});
    for (int64_t r = 0; r < q; ++r) normalize(r, mean.const_data_ptr<float>()[r]);
    return out;
  }
  over_rows(q, [&](int64_t r0, int64_t r1) {
    std::vector<float> sq(H);
    for (int64_t r = r0; r < r1; ++r) {
      squares(r, sq.data());
      normalize(r, sum.mean(sq.data(), H));
    }
  });
  return out;
}

// h += out over the pass's rows ([q, H] bfloat16): one bfloat16 add each
void residual(bf16_t* h, const at::Tensor& out, int64_t q, int64_t H) {
  const auto* o = reinterpret_cast<const bf16_t*>(out.const_data_ptr());
  over_rows(q, [&](int64_t r0, int64_t r1) { add_into(h + r0 * H, o + r0 * H, h + r0 * H, (r1 - r0) * H); });
}

at::Tensor product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, int64_t kind,
                   int64_t group) {
  return kind == INT4_NATIVE ? int4_mm(x, weight, group, scales) : int8_mm(x, weight, scales);
}

// Rotary on q and k, the cache write, and the queries for attention, from the stacked q/k/v `y`
// [q, (QH + 2 KVH) d]: keys/values rows [length, length + q) of each key head take k (rotated) and
// v (`slots`, where given: row r's entry goes to slots[r] instead); returns the rotated queries
// [q, QH, d]. cos, sin: [q, d].
at::Tensor rotate_and_cache(const at::Tensor& y, const bf16_t* cos, const bf16_t* sin, at::Tensor& keys,
                            at::Tensor& values, int64_t length, int64_t QH, int64_t KVH, int64_t d,
                            const int32_t* slots) {
  const int64_t q = y.size(0), stride = y.size(1), half = d / 2;
  const auto* in = reinterpret_cast<const bf16_t*>(y.const_data_ptr());
  at::Tensor query = at::empty({q, QH, d}, y.options());
  auto* qo = reinterpret_cast<bf16_t*>(query.data_ptr());
  auto* kb = reinterpret_cast<bf16_t*>(keys.data_ptr());
  auto* vb = reinterpret_cast<bf16_t*>(values.data_ptr());
  const int64_t ks1 = keys.stride(1), ks2 = keys.stride(2), vs1 = values.stride(1), vs2 = values.stride(2);
  over_rows(q, [&](int64_t r0, int64_t r1) {
  std::vector<bf16_t> turned(d);
  for (int64_t r = r0; r < r1; ++r) {
    const bf16_t* c = cos + r * d;
    const bf16_t* s = sin + r * d;
    for (int64_t h = 0; h < QH + KVH; ++h) {
      const bf16_t* x = in + r * stride + h * d;
      // rotate_half: cat(-x[half:], x[:half]) (negation is exact in bfloat16)
      for (int64_t j = 0; j < half; ++j) {
        turned[j] = static_cast<bf16_t>(x[j + half] ^ 0x8000);
        turned[j + half] = x[j];
      }
      const int64_t slot = slots != nullptr ? slots[r] : length + r;
      bf16_t* dst = h < QH ? qo + (r * QH + h) * d : kb + (h - QH) * ks1 + slot * ks2;
      for (int64_t j = 0; j < d; j += 16) {
        const __m512 a = rounded(_mm512_mul_ps(load_bf16(x + j), load_bf16(c + j)));
        const __m512 b = rounded(_mm512_mul_ps(load_bf16(turned.data() + j), load_bf16(s + j)));
        store16(dst + j, _mm512_add_ps(a, b));
      }
    }
    const int64_t slot = slots != nullptr ? slots[r] : length + r;
    for (int64_t h = 0; h < KVH; ++h)
      std::memcpy(vb + h * vs1 + slot * vs2, in + r * stride + (QH + KVH + h) * d, d * sizeof(bf16_t));
  }
  });
  return query;
}

}  // namespace

// The llama RMSNorm as the decoder layers compute it (for tests: bitwise the modules' formula).
at::Tensor rms_norm_op(const at::Tensor& hidden, const at::Tensor& weight, double eps) {
  TORCH_CHECK(hidden.dim() == 2 && hidden.scalar_type() == at::kBFloat16 && hidden.is_contiguous() &&
                  hidden.size(1) % 16 == 0 && weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() &&
                  weight.numel() == hidden.size(1),
              "swift_kernels::rms_norm: hidden [q, H] and weight [H] bfloat16, H a multiple of 16");
  return rms_norm(hidden, weight, eps);
}

// The vector width of ATen's float sum as written out here (16 or 8), 0 where ATen's is called instead.
int64_t mean_lanes() { return reduction().lanes; }

// Whether the MLP's SiLU is written out here (bitwise ATen's on every bfloat16 value) or ATen's is called.
bool silu_written_out() { return silu_matches(); }

at::Tensor decoder_layers(const at::Tensor& hidden_in, const at::Tensor& cos_in, const at::Tensor& sin_in,
                          at::TensorList norm_weights, at::ArrayRef<double> norm_eps, at::TensorList weights,
                          at::TensorList scales, at::TensorList qkv_bias, at::TensorList keys, at::TensorList values,
                          at::IntArrayRef lengths, c10::List<bool> skip_attention, c10::List<bool> skip_mlp,
                          int64_t q_heads, int64_t kv_heads, int64_t head_dim, double scaling, int64_t kind,
                          int64_t group, const at::Tensor& rows_index, at::TensorList rows_lengths,
                          const std::optional<at::Tensor>& slots) {
  const int64_t layers = static_cast<int64_t>(keys.size());
  TORCH_CHECK(kind == INT4_NATIVE || kind == INT8_NATIVE, "swift_kernels::decoder_layers: swift's kernels only");
  TORCH_CHECK(hidden_in.dim() == 2 && hidden_in.scalar_type() == at::kBFloat16 && hidden_in.size(1) % 16 == 0,
              "swift_kernels::decoder_layers: hidden must be [q, H] bfloat16, H a multiple of 16");
  const int64_t q = hidden_in.size(0), H = hidden_in.size(1), d = head_dim;
  TORCH_CHECK(cos_in.numel() == q * d && sin_in.numel() == q * d && cos_in.scalar_type() == at::kBFloat16 &&
                  sin_in.scalar_type() == at::kBFloat16 && d % 16 == 0,
              "swift_kernels::decoder_layers: cos and sin must hold [q, head_dim] bfloat16, head_dim % 16 == 0");
  TORCH_CHECK(static_cast<int64_t>(values.size()) == layers && static_cast<int64_t>(lengths.size()) == layers &&
                  static_cast<int64_t>(skip_attention.size()) == layers &&
                  static_cast<int64_t>(skip_mlp.size()) == layers &&
                  static_cast<int64_t>(rows_lengths.size()) == layers &&
                  static_cast<int64_t>(weights.size()) == 5 * layers &&
                  static_cast<int64_t>(scales.size()) == 5 * layers &&
                  static_cast<int64_t>(norm_weights.size()) == 2 * layers &&
                  static_cast<int64_t>(norm_eps.size()) == 2 * layers &&
                  (qkv_bias.empty() || static_cast<int64_t>(qkv_bias.size()) == layers),
              "swift_kernels::decoder_layers: per-layer lists of inconsistent lengths");
  for (const at::Tensor& w : norm_weights)
    TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.numel() == H,
                "swift_kernels::decoder_layers: norm weights must be [H] bfloat16");
  for (const at::Tensor& b : qkv_bias)
    TORCH_CHECK(b.scalar_type() == at::kBFloat16 && b.is_contiguous() && b.numel() % 16 == 0,
                "swift_kernels::decoder_layers: q/k/v biases must be bfloat16");
  // rows of several sequences in one pass (swift_engine/batching): row r's keys and values go to slots[r]
  const int32_t* slot = nullptr;
  int64_t last_slot = -1;
  if (slots.has_value() && slots->defined()) {
    TORCH_CHECK(slots->scalar_type() == at::kInt && slots->is_contiguous() && slots->numel() == q,
                "swift_kernels::decoder_layers: slots must be [q] int32");
    slot = slots->const_data_ptr<int32_t>();
    for (int64_t r = 0; r < q; ++r) {
      TORCH_CHECK(slot[r] >= 0, "swift_kernels::decoder_layers: slots must be >= 0");
      last_slot = std::max<int64_t>(last_slot, slot[r]);
    }
  }
  for (int64_t i = 0; i < layers; ++i) {
    const int64_t needed = slot != nullptr ? last_slot + 1 : lengths[i] + q;
    TORCH_CHECK(keys[i].dim() == 4 && values[i].dim() == 4 && keys[i].scalar_type() == at::kBFloat16 &&
                    values[i].scalar_type() == at::kBFloat16 && keys[i].stride(3) == 1 && values[i].stride(3) == 1 &&
                    keys[i].size(1) == kv_heads && keys[i].size(3) == d && values[i].size(3) == d &&
                    keys[i].size(2) >= needed && values[i].size(2) >= needed,
                "swift_kernels::decoder_layers: keys/values must be [1, KVH, T, d] bfloat16 with room for the rows");
  }
  const at::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  const auto* cp = reinterpret_cast<const bf16_t*>(cos.const_data_ptr());
  const auto* sp = reinterpret_cast<const bf16_t*>(sin.const_data_ptr());
  at::Tensor hidden = hidden_in.contiguous().clone();
  auto* h = reinterpret_cast<bf16_t*>(hidden.data_ptr());
  for (int64_t i = 0; i < layers; ++i) {
    const int64_t w = 5 * i;
    if (skip_attention.get(i)) {
      over_rows(q, [&](int64_t r0, int64_t r1) { add_zero(h + r0 * H, (r1 - r0) * H); });
    } else {
      const at::Tensor x = rms_norm(hidden, norm_weights[2 * i], norm_eps[2 * i]);
      at::Tensor y = product(x, weights[w], scales[w], kind, group);
      TORCH_CHECK(y.size(1) == (q_heads + 2 * kv_heads) * d, "swift_kernels::decoder_layers: q/k/v width");
      if (!qkv_bias.empty()) {
        auto* yp = reinterpret_cast<bf16_t*>(y.data_ptr());
        const auto* bp = reinterpret_cast<const bf16_t*>(qkv_bias[i].const_data_ptr());
        const int64_t width = y.size(1);
        over_rows(q, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) add_into(yp + r * width, bp, yp + r * width, width);
        });
      }
      at::Tensor layer_keys = keys[i], layer_values = values[i];
      const at::Tensor query = rotate_and_cache(y, cp, sp, layer_keys, layer_values, lengths[i], q_heads, kv_heads, d, slot);
      const at::Tensor attended =
          rows_attention(query, layer_keys[0], layer_values[0], rows_index, rows_lengths[i], scaling).reshape({q, -1});
      const at::Tensor out = product(attended, weights[w + 1], scales[w + 1], kind, group);
      residual(h, out, q, H);
    }
    if (skip_mlp.get(i)) {
      over_rows(q, [&](int64_t r0, int64_t r1) { add_zero(h + r0 * H, (r1 - r0) * H); });
    } else {
      const at::Tensor x = rms_norm(hidden, norm_weights[2 * i + 1], norm_eps[2 * i + 1]);
      const at::Tensor gate = product(x, weights[w + 2], scales[w + 2], kind, group);
      at::Tensor up = product(x, weights[w + 3], scales[w + 3], kind, group);
      TORCH_CHECK(up.size(1) % 16 == 0, "swift_kernels::decoder_layers: MLP width must be a multiple of 16");
      gated(gate, up);
      const at::Tensor out = product(up, weights[w + 4], scales[w + 4], kind, group);
      residual(h, out, q, H);
    }
  }
  return hidden;
}

}  // namespace swift_kernels
