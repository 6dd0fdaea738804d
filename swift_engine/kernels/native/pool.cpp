// The kernels' worker threads: spinning briefly between parallel loops, then sleeping.
//
// Why not at::parallel_for (OpenMP): libgomp gives every thread that runs a parallel region a team
// of its own, and once more threads are managed than there are CPUs (a second Python thread using
// PyTorch is enough) every team stops spinning between regions and sleeps on a futex. A one-token
// step has ~180 parallel loops, so each pays a wake-up: measured on the 2-vCPU Xeon, the same step
// took 8.3 ms on Python's main thread and 22.8 ms on any other (the server's request threads, the
// engine's model thread). These threads are the same for every caller and spin for a short while
// between loops (the gaps inside a step are microseconds), sleeping only once idle.

#include "pool.h"

#include <ATen/Parallel.h>

#include <immintrin.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace swift_kernels {
namespace {

// how long an idle worker spins before it sleeps: longer than the gaps between a pass's loops and
// between the passes of a generation (Python's share of a step), short enough to cost nothing idle
constexpr auto SPIN = std::chrono::milliseconds(2);

// how long an idle worker spins without giving its CPU away; past it, it offers the CPU to any other
// ready thread (sched_yield) every few spins. Why: a prompt block alternates swift's products with
// PyTorch's elementwise ops, whose OpenMP threads need the CPU this worker spins on; spinning
// without yielding made those ops ~8x slower (a 384-token prefill on SmolLM2 int4 took 0.70 s
// against 0.22 s, docs/bench/measurements.md#native-kernels). The gaps inside a one-token step are
// a few microseconds, so its loops still find the worker spinning.
constexpr auto YIELD_AFTER = std::chrono::microseconds(20);

thread_local bool in_worker = false;

class Pool {
 public:
  void run(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    const int threads = static_cast<int>(std::min<int64_t>(std::max(1, at::get_num_threads()), n));
    if (threads <= 1 || in_worker) {
      if (n > 0) fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> one_job(submit_);  // callers from several threads take turns
    start(threads - 1);
    const int64_t chunk = (n + threads - 1) / threads;
    fn_ = &fn;
    n_ = n;
    chunk_ = chunk;
    error_ = nullptr;
    pending_.store(threads - 1, std::memory_order_relaxed);
    // the job's generation and thread count in one word: a worker past the count (the pool may hold
    // more workers than a job uses, after set_num_threads) learns it from that word alone and reads
    // none of the fields above, which the next job may be writing already
    job_.store(((job_.load(std::memory_order_relaxed) >> 16) + 1) << 16 | static_cast<uint64_t>(threads),
               std::memory_order_release);
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(sleep_);
      wake_.notify_all();
    }
    std::exception_ptr own;
    try {
      fn(0, std::min(n, chunk));
    } catch (...) {
      own = std::current_exception();
    }
    while (pending_.load(std::memory_order_acquire) > 0) _mm_pause();
    if (own) std::rethrow_exception(own);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void start(int workers) {
    if (pid_ != getpid()) {  // a forked child: the parent's threads are not here
      threads_alive_.clear();
      pid_ = getpid();
    }
    while (static_cast<int>(threads_alive_.size()) < workers) {
      const int index = static_cast<int>(threads_alive_.size()) + 1;
      // the generation before the job about to be posted: a thread that starts late still runs it
      const uint64_t seen = job_.load(std::memory_order_acquire) >> 16;
      threads_alive_.emplace_back([this, index, seen] { work(index, seen); });
      threads_alive_.back().detach();
    }
  }

  void work(int index, uint64_t seen) {
    in_worker = true;
    bool wanted = true;  // whether the last job used this worker: one that did not sleeps at once
    for (;;) {
      auto idle_since = std::chrono::steady_clock::now();
      uint64_t job;
      int spins = 0;
      while (((job = job_.load(std::memory_order_acquire)) >> 16) == seen) {
        _mm_pause();
        if (++spins % 16 == 0 && wanted) {
          const auto idle = std::chrono::steady_clock::now() - idle_since;
          if (idle > YIELD_AFTER) sched_yield();
          if (idle > SPIN) wanted = false;  // long idle: sleep below
        }
        if (!wanted) {
          std::unique_lock<std::mutex> lock(sleep_);
          sleepers_.fetch_add(1);
          wake_.wait(lock, [&] { return (job_.load(std::memory_order_acquire) >> 16) != seen; });
          sleepers_.fetch_sub(1);
          idle_since = std::chrono::steady_clock::now();
        }
      }
      seen = job >> 16;
      wanted = index < static_cast<int>(job & 0xFFFF);
      if (!wanted) continue;  // not in this job (more workers than it uses): never spins against those that are
      const int64_t begin = index * chunk_, end = std::min(n_, begin + chunk_);
      if (begin < end) {
        try {
          (*fn_)(begin, end);
        } catch (...) {
          std::lock_guard<std::mutex> lock(sleep_);
          if (!error_) error_ = std::current_exception();
        }
      }
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex submit_, sleep_;
  std::condition_variable wake_;
  std::atomic<uint64_t> job_{0};  // (generation << 16) | threads of the job posted last
  std::atomic<int> pending_{0}, sleepers_{0};
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  std::exception_ptr error_;
  std::vector<std::thread> threads_alive_;
  pid_t pid_ = getpid();
};

Pool& pool() {
  static Pool* instance = new Pool();  // never destroyed: its detached threads outlive static destruction
  return *instance;
}

}  // namespace

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) { pool().run(n, fn); }

}  // namespace swift_kernels
