// swift's own worker threads for the kernels' parallel loops (pool.cpp explains why not OpenMP's).
#pragma once

#include <cstdint>
#include <functional>

namespace swift_kernels {

// fn(begin, end) over [0, n) split into contiguous pieces, a few per thread (at::get_num_threads() of the
// caller, at most n), that the calling thread and the workers claim until none is left: what
// at::parallel_for(0, n, 1, fn) computes, on threads that stay the same whichever thread calls. Items
// must not depend on the split (which thread runs a piece depends on who comes first).
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

// Per-row work before a product (a pass's int8 inputs and group sums): over the threads from this many
// rows, in the caller alone below (a hand-off costs more than a few rows' work). Why: done by the caller
// alone, it kept the other thread waiting -- 4.5% of a long prompt's prefill in `quantize_row` (perf, Zen 4);
// over the threads, prefill 0.94-0.97x, passes of 16 and 32 rows 0.98x (docs/bench/measurements.md#row-prep).
constexpr int64_t PARALLEL_ROWS = 16;
inline void over_rows_if_many(int64_t rows, const std::function<void(int64_t, int64_t)>& fn) {
  if (rows >= PARALLEL_ROWS) parallel_for(rows, fn);
  else fn(0, rows);
}

}  // namespace swift_kernels
