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

}  // namespace swift_kernels
