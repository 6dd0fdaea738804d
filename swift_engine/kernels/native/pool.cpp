// The kernels' worker threads: spinning briefly between parallel loops, then sleeping; a loop's
// pieces go to whichever thread claims them first.
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

// a loop's pieces per thread: the calling thread and the workers claim pieces until none is left, so
// when a worker is late (another thread of the process, or another process, has its CPU: a server's
// event loop, its clients) the caller does the late worker's share instead of spinning for it. Why:
// with one contiguous piece per thread, the caller of a server's pass under load spent about half its
// CPU waiting for a descheduled worker (perf, 2-vCPU Zen 4, docs/bench/measurements.md#late-workers).
constexpr int64_t PIECES_PER_THREAD = 4;

// how long the caller spins for pieces still running on workers before it offers its CPU away
constexpr auto CALLER_YIELD_AFTER = std::chrono::microseconds(50);

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
    const int64_t chunk = (n + threads * PIECES_PER_THREAD - 1) / (threads * PIECES_PER_THREAD);
    const uint64_t pieces = static_cast<uint64_t>((n + chunk - 1) / chunk);
    fn_ = &fn;
    n_ = n;
    chunk_ = chunk;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t generation = (job_.load(std::memory_order_relaxed) >> 16) + 1;
    // the claims' word: (generation << 32) | (pieces << 16) | next piece; a claim is a successful
    // compare-exchange of it, so a worker that comes late to a job (or to a later one) can only claim
    // a piece of the job still posted, whose fields above stay valid until all its pieces are done
    claim_.store((generation & 0xFFFFFFFF) << 32 | pieces << 16, std::memory_order_release);
    // the job's generation and thread count in one word: a worker past the count (the pool may hold
    // more workers than a job uses, after set_num_threads) learns it from that word alone
    job_.store(generation << 16 | static_cast<uint64_t>(threads), std::memory_order_release);
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(sleep_);
      wake_.notify_all();
    }
    const std::exception_ptr own = claim_pieces(generation, true);
    if (done_.load(std::memory_order_acquire) < pieces) {
      const auto waiting_since = std::chrono::steady_clock::now();
      int spins = 0;
      while (done_.load(std::memory_order_acquire) < pieces) {
        _mm_pause();
        if (++spins % 16 == 0 && std::chrono::steady_clock::now() - waiting_since > CALLER_YIELD_AFTER) sched_yield();
      }
    }
    if (own) std::rethrow_exception(own);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // run pieces of job `generation` until none is left to claim, from any thread. The first error of
  // the calling thread is returned, a worker's is kept in error_ -- either before its piece is
  // counted, so the caller, which waits for every piece, sees it; after an error the pieces this
  // thread claims are counted without running.
  std::exception_ptr claim_pieces(uint64_t generation, bool caller) {
    std::exception_ptr error;
    uint64_t word = claim_.load(std::memory_order_acquire);
    for (;;) {
      if ((word >> 32) != (generation & 0xFFFFFFFF)) return error;  // a later job's word: this one is done
      const uint64_t next = word & 0xFFFF, pieces = (word >> 16) & 0xFFFF;
      if (next >= pieces) return error;
      if (!claim_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        continue;  // another thread claimed first (word now holds what it wrote)
      }
      if (!error) {
        const int64_t begin = static_cast<int64_t>(next) * chunk_, end = std::min(n_, begin + chunk_);
        try {
          (*fn_)(begin, end);
        } catch (...) {
          error = std::current_exception();
          if (!caller) {
            std::lock_guard<std::mutex> lock(sleep_);
            if (!error_) error_ = error;
          }
        }
      }
      done_.fetch_add(1, std::memory_order_acq_rel);
      word = claim_.load(std::memory_order_acquire);
    }
  }

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
      claim_pieces(seen, false);
    }
  }

  std::mutex submit_, sleep_;
  std::condition_variable wake_;
  std::atomic<uint64_t> job_{0};    // (generation << 16) | threads of the job posted last
  std::atomic<uint64_t> claim_{0};  // (generation << 32) | (pieces << 16) | next piece to claim
  std::atomic<uint64_t> done_{0};   // pieces of the posted job finished
  std::atomic<int> sleepers_{0};
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
