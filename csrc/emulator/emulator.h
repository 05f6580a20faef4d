// A CPU emulator of the CUDA execution model, just wide enough to run csrc/ on CPU tensors (no GPU needed):
// tools/cuda_emulator.py compiles the very .cu sources and the bindings with the host C++ compiler, this header
// force-included (-include), this folder first on the include path (its masksub_platform.h and cub/ stand for the
// real ones), every `kernel<<<grid, block, smem, stream>>>(args)` rewritten as
// `::masksub_emu::launch(kernel, grid, block, smem, stream)(args)` and a check of __launch_bounds__ put first in
// the kernels that have one.
//
// Model, and why it is faithful where the kernels depend on it:
//   - a launch runs its blocks one after another, the last block first, then the others from the first up (a
//     GPU's order is unspecified: a kernel that takes the block of the largest index to run last, or the smallest to
//     run first, instead of counting arrivals with a ticket, fails here; in index order the largest ran last, so a
//     merge by the last split's index passed: helper-186's S1); the threads of a block are fibers (ucontext) on the
//     calling thread, each running until it reaches a barrier or exits, in thread order. Deterministic, and the
//     harshest schedule for a missing barrier: every thread runs as far ahead of the others as it can, so a read of
//     shared memory that another thread has not yet written, or a write over data others still read, shows in the
//     results instead of depending on timing;
//   - __shared__ is a function-local static: one object per kernel instantiation, shared by the threads of the
//     block that runs (blocks never overlap). It starts at zero and then holds the previous block's leftovers;
//     poisoning it per block is not possible this way (GCC ignores section attributes on the static locals of
//     templates), so a read of shared memory that no thread of the block wrote is not detected;
//   - __syncthreads() waits for every thread of the block that has not exited (as on sm_70 and later); when no
//     thread can move (a barrier some live thread never reaches) the emulator aborts with a message;
//   - __shfl_xor_sync exchanges through a per-warp buffer between two warp barriers; a full-mask shuffle in a warp
//     with an exited lane aborts, whether the lane exited before the others entered it or while they wait in it.
//     Stricter than a GPU, where the live lanes may shuffle and only a read from an exited lane is undefined: csrc's
//     shuffles are butterflies over the whole warp, whose every lane reads every other across the rounds;
//   - launch configurations are checked as the driver checks them (<= 1024 threads per block, grid.y/z <= 65535),
//     and a bad one is reported by cudaGetLastError() as cudaErrorInvalidConfiguration; a block larger than its
//     kernel's __launch_bounds__ aborts (check_launch_bounds, the first statement tools/cuda_emulator.py puts in
//     every such kernel; a GPU refuses the launch: a bug in the launcher either way);
//   - streams are checked, more strictly than a GPU does: a launch must be on the stream that the emulated
//     masksub_platform.h handed out for the tensors' device (see hand_out_stream below);
//   - cub::BlockRadixSort / BlockScan are re-implemented from their documented contracts (emulator/cub/).
// What it does not model: concurrency between barriers (warp-synchronous code without *_sync, memory ordering;
// atomics and fences are the plain operations of one thread, as blocks never overlap),
// shared memory size limits, and most device maths: logf, IEEE division... are the host's (ULP-level differences);
// the approximate ones the kernels call (__fdividef, ex2.approx, exp2f) move the correctly rounded results within
// their 2 ulp (the end of this file).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>  // types only (dim3, uint4, cudaError_t, cudaStream_t): nothing links the CUDA runtime

#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)  // AddressSanitizer (tools/cuda_emulator.py, sanitize="address")
#include <sanitizer/common_interface_defs.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace masksub_emu {

constexpr int kWarpSize = 32;
constexpr size_t kFiberStack = size_t{256} << 10;  // bytes of stack per emulated thread

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "masksub CUDA emulator: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

struct ThreadContext {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
  int linear = 0;  // x + y * blockDim.x + z * blockDim.x * blockDim.y: the lane is linear % 32, as on a GPU
  struct Block* block = nullptr;
  char* stack = nullptr;         // the fiber's stack
  void* fake_stack = nullptr;    // AddressSanitizer's saved state of the fiber while it is switched out
};

// The fibers of the block that runs, and the scheduler's own context to switch back to.
struct Scheduler {
  ucontext_t home;
  ucontext_t* running = nullptr;  // the fiber that runs now
  ThreadContext* thread = nullptr;
  const std::function<void()>* body = nullptr;
  uint64_t events = 0;  // arrivals, releases and exits: a round of the scheduler without one is a deadlock
  void* home_fake_stack = nullptr;  // AddressSanitizer's view of the scheduler's stack, told at each switch
  const void* home_bottom = nullptr;
  size_t home_size = 0;
};

inline Scheduler& scheduler() {
  static thread_local Scheduler current;
  return current;
}

// Stack switches announced to AddressSanitizer (no-ops without it), so that it tracks the fibers' stacks.
inline void switch_start(void** fake_stack, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}

inline void switch_finish(void* fake_stack, const void** bottom_old, size_t* size_old) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack, bottom_old, size_old);
#else
  (void)fake_stack, (void)bottom_old, (void)size_old;
#endif
}

// From a fiber back to the scheduler, until the scheduler resumes it.
inline void yield() {
  Scheduler& s = scheduler();
  ThreadContext& thread = *s.thread;
  switch_start(&thread.fake_stack, s.home_bottom, s.home_size);
  swapcontext(s.running, &s.home);
  switch_finish(thread.fake_stack, &s.home_bottom, &s.home_size);
}

// A reusable barrier for a group of threads, from which exited threads drop out.
class Barrier {
 public:
  explicit Barrier(int count) : expected_(count) {}

  void arrive_and_wait() {
    const uint64_t generation = generation_;
    ++scheduler().events;
    if (++arrived_ == expected_) {
      release();
      return;
    }
    while (generation_ == generation) yield();
  }

  void drop() {
    ++scheduler().events;
    --expected_;
    if (arrived_ > 0 && arrived_ == expected_) release();
  }

  int live() const { return expected_; }
  int waiting() const { return arrived_; }

 private:
  void release() {
    arrived_ = 0;
    ++generation_;
  }

  int expected_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
};

struct Warp {
  explicit Warp(int lanes) : barrier(lanes) {}
  Barrier barrier;
  unsigned char slots[kWarpSize][16];
};

struct Block {
  explicit Block(int threads) : barrier(threads) {
    for (int first = 0; first < threads; first += kWarpSize) {
      warps.push_back(std::make_unique<Warp>(threads - first < kWarpSize ? threads - first : kWarpSize));
    }
  }
  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline ThreadContext& context() {
  ThreadContext* thread = scheduler().thread;
  if (thread == nullptr) fail("a device function ran outside a kernel launch");
  return *thread;
}

inline Block& current_block() { return *context().block; }

inline void sync_threads() { current_block().barrier.arrive_and_wait(); }

template <typename T>
T shfl_xor_sync(unsigned mask, T value, int lane_mask, int width) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle of a register-sized value");
  if (width != kWarpSize || mask != 0xFFFFFFFFu) fail("__shfl_xor_sync: only full-warp shuffles are emulated");
  const int lane = context().linear % kWarpSize;
  Warp& warp = *current_block().warps[context().linear / kWarpSize];
  if (warp.barrier.live() != kWarpSize) fail("__shfl_xor_sync: a full-mask shuffle in a warp with exited lanes");
  std::memcpy(warp.slots[lane], &value, sizeof(T));
  warp.barrier.arrive_and_wait();
  T result;
  std::memcpy(&result, warp.slots[(lane ^ lane_mask) % kWarpSize], sizeof(T));
  warp.barrier.arrive_and_wait();
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// Launches
// ---------------------------------------------------------------------------------------------------------------

inline cudaError_t& last_error() {
  thread_local cudaError_t error = cudaSuccess;
  return error;
}

inline cudaError_t get_last_error() {
  const cudaError_t error = last_error();
  last_error() = cudaSuccess;
  return error;
}

inline const char* error_string(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle (the CUDA emulator: a launch not on the stream that masksub_platform.h's "
             "current_stream handed out)";
    default:
      return "unknown error";
  }
}

// Streams. The emulated platform (emulator/masksub_platform.h) hands out a distinct sentinel stream per device, and
// every launch must be on the stream handed out last on its thread; any other one, the default stream (null)
// included, fails the launch with cudaErrorInvalidResourceHandle. A GPU would accept such a launch and race with
// torch's work on the tensors' stream; here a binding or launcher that drops or mixes up its stream fails a test.
// The sentinels are never dereferenced: one host thread runs everything in order.
inline cudaStream_t& handed_out_stream() {
  thread_local cudaStream_t stream = nullptr;
  return stream;
}

inline cudaStream_t hand_out_stream(int device_index) {
  static char sentinels[257];  // one per c10::DeviceIndex, -1 (a CPU tensor's) included
  if (device_index < -1 || device_index > 255) fail("hand_out_stream: a device index out of range");
  handed_out_stream() = reinterpret_cast<cudaStream_t>(&sentinels[device_index + 1]);
  return handed_out_stream();
}

inline bool valid_configuration(dim3 grid, dim3 block) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  return threads >= 1 && threads <= 1024 && block.z <= 64 && grid.x >= 1 && grid.x <= 0x7FFFFFFFu &&
         grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 && grid.z <= 65535;
}

// Stacks of the fibers, kept from one block to the next (allocated lazily by the OS: untouched pages cost nothing).
inline char* fiber_stack(int index) {
  static thread_local std::vector<std::unique_ptr<char[]>> stacks;
  while (static_cast<int>(stacks.size()) <= index) stacks.emplace_back(new char[kFiberStack]);
  return stacks[index].get();
}

inline void fiber_main() {
  Scheduler& s = scheduler();
  switch_finish(nullptr, &s.home_bottom, &s.home_size);
  ThreadContext& thread = *s.thread;
  (*s.body)();
  Block& block = *thread.block;
  Barrier& warp = block.warps[thread.linear / kWarpSize]->barrier;
  // lanes of its warp waiting in a full-mask shuffle (the only user of the warp barrier) that this lane never joins:
  // refused as shfl_xor_sync refuses a lane exited before the shuffle began (the model above: stricter than a GPU)
  if (warp.waiting() > 0) fail("__shfl_xor_sync: a full-mask shuffle in a warp with exited lanes");
  warp.drop();  // an exited thread: barriers stop waiting for it
  block.barrier.drop();
  thread.block = nullptr;
  switch_start(nullptr, s.home_bottom, s.home_size);  // returning switches to uc_link, the scheduler, for good
}

inline void run_block(dim3 grid, dim3 block_dim, uint3 block_idx, const std::function<void()>& body) {
  const int threads = static_cast<int>(block_dim.x * block_dim.y * block_dim.z);
  Scheduler& s = scheduler();
  if (s.running != nullptr) fail("a kernel launched from inside a kernel (dynamic parallelism is not emulated)");
  Block block(threads);
  std::vector<ThreadContext> contexts(threads);
  std::vector<ucontext_t> fibers(threads);
  for (int linear = 0; linear < threads; ++linear) {
    ThreadContext& c = contexts[linear];
    c.linear = linear;
    c.thread_idx = {linear % block_dim.x, (linear / block_dim.x) % block_dim.y, linear / (block_dim.x * block_dim.y)};
    c.block_idx = block_idx;
    c.block_dim = block_dim;
    c.grid_dim = grid;
    c.block = &block;
    c.stack = fiber_stack(linear);
    getcontext(&fibers[linear]);
    fibers[linear].uc_stack.ss_sp = c.stack;
    fibers[linear].uc_stack.ss_size = kFiberStack;
    fibers[linear].uc_link = &s.home;
    makecontext(&fibers[linear], fiber_main, 0);
  }
  s.body = &body;
  int remaining = threads;
  while (remaining > 0) {
    const uint64_t events = s.events;
    for (int linear = 0; linear < threads; ++linear) {
      if (contexts[linear].block == nullptr) continue;  // exited
      s.running = &fibers[linear];
      s.thread = &contexts[linear];
      switch_start(&s.home_fake_stack, contexts[linear].stack, kFiberStack);
      swapcontext(&s.home, &fibers[linear]);
      switch_finish(s.home_fake_stack, nullptr, nullptr);
      if (contexts[linear].block == nullptr) --remaining;
    }
    if (remaining > 0 && s.events == events) {
      fail("deadlock: live threads wait at a barrier (__syncthreads or a warp shuffle) that others never reach");
    }
  }
  s.running = nullptr;
  s.thread = nullptr;
  s.body = nullptr;
}

template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  cudaStream_t stream;

  // Arguments convert to the kernel's parameter types as in a CUDA launch; every thread gets its own copies.
  template <typename... Args>
  void operator()(Args&&... args) const {
    if (!valid_configuration(grid, block)) {
      last_error() = cudaErrorInvalidConfiguration;
      return;
    }
    if (stream == nullptr || stream != handed_out_stream()) {
      last_error() = cudaErrorInvalidResourceHandle;
      return;
    }
    const std::tuple<std::decay_t<Params>...> params(static_cast<Params>(std::forward<Args>(args))...);
    auto kernel_of_launch = kernel;
    const std::function<void()> body = [&] { std::apply(kernel_of_launch, params); };
    // blocks by linear index x + X (y + Y z): the last, then 0, 1, ... (the model above)
    const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
    for (uint64_t step = 0; step < blocks; ++step) {
      const uint64_t linear = step == 0 ? blocks - 1 : step - 1;
      const auto x = static_cast<unsigned>(linear % grid.x), y = static_cast<unsigned>(linear / grid.x % grid.y);
      run_block(grid, block, {x, y, static_cast<unsigned>(linear / grid.x / grid.y)}, body);
    }
  }
};

// The first statement of every kernel defined with __launch_bounds__ (tools/cuda_emulator.py inserts it; the
// attribute expands to nothing here): a GPU refuses a launch of more threads per block than the bound ("too many
// resources requested for launch": the launcher returns the error); the emulator aborts the run, in the block's
// first thread, before any statement of the kernel.
inline void check_launch_bounds(unsigned max_threads, unsigned /* min_blocks_per_sm */ = 0,
                                unsigned /* max_blocks_per_cluster */ = 0) {
  const dim3 block = context().block_dim;
  if (block.x * block.y * block.z > max_threads) {
    fail("a launch of more threads per block than the kernel's __launch_bounds__ (a GPU refuses it)");
  }
}

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared = 0,
                         cudaStream_t stream = nullptr) {
  // One host thread runs everything in order: every launch is complete when it returns, whatever its stream.
  if (dynamic_shared != 0) fail("dynamic shared memory is not emulated");
  return {kernel, grid, block, stream};
}

}  // namespace masksub_emu

// ---------------------------------------------------------------------------------------------------------------
// The CUDA names the kernels use, for the host compiler
// ---------------------------------------------------------------------------------------------------------------

#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx (::masksub_emu::context().thread_idx)
#define blockIdx (::masksub_emu::context().block_idx)
#define blockDim (::masksub_emu::context().block_dim)
#define gridDim (::masksub_emu::context().grid_dim)
#define cudaGetLastError() ::masksub_emu::get_last_error()
#define cudaGetErrorString(error) ::masksub_emu::error_string(error)

inline void __syncthreads() { ::masksub_emu::sync_threads(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = ::masksub_emu::kWarpSize) {
  return ::masksub_emu::shfl_xor_sync(mask, value, lane_mask, width);
}

template <typename T>
T __ldg(const T* pointer) {
  return *pointer;
}

// Loads through L2 only (the GPU's L1 is not coherent across SMs): one memory here.
template <typename T>
T __ldcg(const T* pointer) {
  return *pointer;
}

// Blocks run one after another on one host thread: an atomic read-modify-write is a plain one, and a fence has
// nothing to order (every write of a finished block is visible to the next). Kernels that pick "the last block"
// by a ticket thus run their last-block path in the last block the emulator runs, on the states the others left.
inline int atomicAdd(int* address, int value) {
  const int old = *address;
  *address = old + value;
  return old;
}

inline void __threadfence() {}

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<uint64_t>(a) * b) >> 32);
}

// The GPU's fast-math approximations, modelled as tools/gpu_math.py models the Triton kernels' (the same hash, the
// same knots): the correctly rounded result moved by -1, 0 or +1 ulp, drawn from a multiplicative hash of the
// operand's bits (Knuth's 2654435761), deterministic as the hardware is, inside its documented 2 ulp. The host's
// IEEE results alone would be the best case, and a tolerance that only they meet would fail on a GPU.
namespace masksub_emu {

// -1, 0 or 1 from the bits of x (gpu_math._ulp_offsets of one operand).
inline int ulp_offset(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  uint32_t h = (bits + 0x9E3779B9u) * 2654435761u;
  h ^= h >> 15;
  h *= 2246822519u;
  return static_cast<int>((h >> 8) % 3u) - 1;
}

// v moved by `ulps` units in its last place, towards larger magnitudes for ulps > 0; 0, inf and NaN stay, and so
// does v where the move would reach 0 or inf.
inline float off_by_ulps(float v, int ulps) {
  if (v == 0.0f || !std::isfinite(v)) return v;
  int32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += ulps;  // the magnitude sits in the low 31 bits: a finite non-zero float never crosses the sign bit by one
  float moved;
  std::memcpy(&moved, &bits, sizeof moved);
  return std::isfinite(moved) && moved != 0.0f ? moved : v;  // 2^-149 stays (gpu_math keeps the sign)
}

// 2^x as a GPU's MUFU.EX2 gives it (gpu_math.ex2_approx without ftz): the correctly rounded result (an fp64 exp2,
// then one rounding: the host's exp2f is off by up to ~0.5 ulp more) moved by -1, 0 or +1 ulp, exact at integers.
inline float ex2_approx(float x) {
  const float r = static_cast<float>(std::exp2(static_cast<double>(x)));
  return x == std::nearbyint(x) ? r : off_by_ulps(r, ulp_offset(x));
}

}  // namespace masksub_emu

// __fdividef(a, b): a times an approximate reciprocal of b (2 ulp): one relative error of -1, 0 or +1 times 2^-24
// per divisor (its hash), exact where b is a power of two (the reciprocal's mantissa is 1), and 0 for 2^126 < |b|
// < 2^128 (NaN if a is infinite: inf x 0), as the CUDA C++ Programming Guide documents. Not modelled: |b| < 2^-126,
// where the GPU's reciprocal overflows (the kernels divide by 1 + e^-|x| >= 1 only).
inline float __fdividef(float a, float b) {
  const float magnitude = std::fabs(b);
  if (std::isfinite(magnitude) && magnitude > 0x1p126f) return std::isinf(a) ? NAN : 0.0f * a * b;
  int exponent;
  const bool power_of_two = std::frexp(magnitude, &exponent) == 0.5f;
  const double error = power_of_two ? 0.0 : ::masksub_emu::ulp_offset(b) * 0x1p-24;
  return static_cast<float>(static_cast<double>(a) / b * (1.0 + error));
}

// NVVM's builtin for PTX ex2.approx.ftz.f32 (csrc declares it): 2^x with subnormal arguments and results flushed to
// 0, ex2_approx otherwise.
extern "C" inline float __nvvm_ex2_approx_ftz_f(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.0f;
  const float r = ::masksub_emu::ex2_approx(x);
  return std::fpclassify(r) == FP_SUBNORMAL ? 0.0f : r;
}

// exp2f in device code (the backward kernel's, without -use_fast_math): on a GPU the same MUFU.EX2 with a fix-up
// that keeps subnormal results (2 ulp, the CUDA C++ Programming Guide), here ex2_approx. A function-like macro,
// defined after every system header this file includes: it renames calls `exp2f(...)` in the sources compiled after
// it (csrc/ and, in the bindings, the torch headers, whose host code computes no exp2f), and a `std::exp2f(...)` or
// a declaration of exp2f after it would fail to compile rather than go unnoticed.
namespace masksub_emu {
inline float device_exp2f(float x) { return ex2_approx(x); }
}  // namespace masksub_emu
#define exp2f(x) ::masksub_emu::device_exp2f(x)
