// A measurement, not the project's code: the int8 output head's product on AVX-512 VNNI in two weight
// layouts, for 1-16 rows, after the caches are flushed (a head after a step is not in cache).
//   current:     the weights as they lie ([N][K] int8, swift's native/int8_vnni.cpp): per 64 inputs and
//                output one VPDPBUSD into 16 lanes, then a conversion and a multiply-add per lane group
//   interleaved: [N/16][K/4][16 outputs][4 inputs], the codes as u8 = w + 128: one VPDPBUSD multiplies 16
//                outputs by 4 inputs, whole groups of 32 inputs add up as integers, one conversion and
//                multiply-add per 16 outputs and group (the layout int4_vnni.cpp builds from aten's)
// The two sum the same products in another float order (the check prints the largest difference).
// Build and run (N K: SmolLM2's head 49152 576, Qwen2.5-Coder-0.5B's 151936 896):
//   g++ -O3 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -fopenmp int8-head-layout.cpp -o head
//   OMP_NUM_THREADS=2 ./head 49152 576
#include <immintrin.h>
#include <omp.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <vector>
#include <algorithm>
static inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) { asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8)); return acc; }
static int N = 49152, K = 576;
// current: w [N][K] int8; xq [M][K]; d [M][K/32]; out [M][N] float (pre-scale)
template <int R>
static void cur_quad(const int8_t* xq, const float* d, const int8_t* w, float* out, int o0) {
  const __m512i sign = _mm512_set1_epi8((char)0x80);
  __m512 acc[4][4];
  for (int r = 0; r < R; ++r) for (int o = 0; o < 4; ++o) acc[r][o] = _mm512_setzero_ps();
  for (int g = 0; g < K / 64; ++g) {
    __m512i wv[4];
    for (int o = 0; o < 4; ++o) _mm_prefetch((const char*)(w + (int64_t)(o0 + o + 16) * K + g * 64), _MM_HINT_T0);
    for (int o = 0; o < 4; ++o) wv[o] = _mm512_xor_si512(_mm512_loadu_si512(w + (int64_t)(o0 + o) * K + g * 64), sign);
    for (int r = 0; r < R; ++r) {
      const __m512i xv = _mm512_loadu_si512(xq + (int64_t)r * K + g * 64);
      const float* dr = d + r * (K / 32) + 2 * g;
      const __m512 dg = _mm512_insertf32x8(_mm512_set1_ps(dr[0]), _mm256_set1_ps(dr[1]), 1);
      for (int o = 0; o < 4; ++o) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[o], xv);
        acc[r][o] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), dg, acc[r][o]);
      }
    }
  }
  for (int r = 0; r < R; ++r) for (int o = 0; o < 4; ++o) out[(int64_t)r * N + o0 + o] = _mm512_reduce_add_ps(acc[r][o]);
}
static void cur(int M, const int8_t* xq, const float* d, const int8_t* w, float* out) {
#pragma omp parallel for schedule(static)
  for (int o0 = 0; o0 < N; o0 += 4)
    for (int r0 = 0; r0 < M; r0 += 4) {
      int R = std::min(4, M - r0);
      const int8_t* x = xq + (int64_t)r0 * K; const float* dd = d + r0 * (K / 32); float* oo = out + (int64_t)r0 * N;
      if (R == 4) cur_quad<4>(x, dd, w, oo, o0); else if (R == 3) cur_quad<3>(x, dd, w, oo, o0);
      else if (R == 2) cur_quad<2>(x, dd, w, oo, o0); else cur_quad<1>(x, dd, w, oo, o0);
    }
}
// interleaved: wi [N/16][K/4][16 outputs][4 bytes] (u8 = w + 128)
template <int R>
static void il_block(const int8_t* xq, const float* d, const uint8_t* wi, float* out, int t0) {  // 4 tiles = 64 outputs
  __m512 acc[2][4];
  for (int r = 0; r < R; ++r) for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t tile_bytes = (int64_t)K * 16;
  for (int g = 0; g < K / 32; ++g) {
    __m512i dot[2][4];
    for (int r = 0; r < R; ++r) for (int t = 0; t < 4; ++t) dot[r][t] = _mm512_setzero_si512();
    for (int q = 0; q < 8; ++q) {
      const int k4 = g * 8 + q;
      __m512i wv[4];
      for (int t = 0; t < 4; ++t) wv[t] = _mm512_loadu_si512(wi + (t0 + t) * tile_bytes + (int64_t)k4 * 64);
      for (int r = 0; r < R; ++r) {
        const __m512i x4 = _mm512_set1_epi32(*(const int32_t*)(xq + (int64_t)r * K + 4 * k4));
        for (int t = 0; t < 4; ++t) dot[r][t] = dpbusd(dot[r][t], wv[t], x4);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 dg = _mm512_set1_ps(d[r * (K / 32) + g]);
      for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][t]), dg, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r) for (int t = 0; t < 4; ++t) _mm512_storeu_ps(out + (int64_t)r * N + (t0 + t) * 16, acc[r][t]);
}
static void il(int M, const int8_t* xq, const float* d, const uint8_t* wi, float* out) {
#pragma omp parallel for schedule(static)
  for (int t0 = 0; t0 < N / 16; t0 += 4) {
    for (int t = 0; t < 4; ++t)
      for (int line = 0; line < K * 16; line += 64) _mm_prefetch((const char*)(wi + (int64_t)(t0 + 4 + t) * K * 16 + line), _MM_HINT_T0);
    for (int r0 = 0; r0 < M; r0 += 2) {
      const int8_t* x = xq + (int64_t)r0 * K; const float* dd = d + r0 * (K / 32); float* oo = out + (int64_t)r0 * N;
      if (M - r0 >= 2) il_block<2>(x, dd, wi, oo, t0); else il_block<1>(x, dd, wi, oo, t0);
    }
  }
}
int main(int argc, char** argv) {
  if (argc == 3) { N = atoi(argv[1]); K = atoi(argv[2]); }
  std::vector<int8_t> w((int64_t)N * K); for (auto& v : w) v = (int8_t)(rand() % 255 - 127);
  std::vector<uint8_t> wi((int64_t)N * K);
  for (int o = 0; o < N; ++o) for (int k = 0; k < K; ++k)
    wi[((int64_t)(o / 16) * (K / 4) + k / 4) * 64 + (o % 16) * 4 + k % 4] = (uint8_t)(w[(int64_t)o * K + k] + 128);
  std::vector<int8_t> xq(16 * K); for (auto& v : xq) v = (int8_t)(rand() % 255 - 127);
  std::vector<float> d(16 * K / 32, 0.01f), o1((int64_t)16 * N), o2((int64_t)16 * N);
  std::vector<char> flush(64 << 20, 1);
  for (int M : {1, 4, 8, 16}) {
    double bc = 1e9, bi = 1e9;
    for (int rep = 0; rep < 12; ++rep) {
      for (size_t i = 0; i < flush.size(); i += 64) flush[i]++;  // evict: the head after a step is not in cache
      auto t = std::chrono::steady_clock::now(); cur(M, xq.data(), d.data(), w.data(), o1.data());
      bc = std::min(bc, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
      for (size_t i = 0; i < flush.size(); i += 64) flush[i]++;
      t = std::chrono::steady_clock::now(); il(M, xq.data(), d.data(), wi.data(), o2.data());
      bi = std::min(bi, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
    }
    // check: il's sums (with +128 u8) minus 128*sum(x*d) correction equal cur's (with xor sign) up to float order
    double maxdiff = 0, maxabs = 0;
    for (int r = 0; r < M; ++r) { double corr = 0; for (int k = 0; k < K; ++k) corr += 128.0 * xq[r * K + k] * d[r * (K / 32) + k / 32];
      for (int o = 0; o < N; ++o) { double a = o1[(int64_t)r * N + o], b = o2[(int64_t)r * N + o]; (void)corr; maxdiff = std::max(maxdiff, std::abs(a - b)); maxabs = std::max(maxabs, std::abs(a)); } }
    printf("M=%2d current %.2f ms  interleaved %.2f ms  ratio %.2f  (maxdiff %.3g of %.3g)\n", M, bc, bi, bi / bc, maxdiff, maxabs);
  }
}
