// Probe kernels for the CUDA emulator (csrc/emulator/emulator.h), built and run by tests/test_cuda_emulator.py:
// each check prints "<name> ok" or "<name> FAIL <detail>"; `probe deadlock` and `probe launch_bounds` (a block larger
// than its kernel's __launch_bounds__) must abort with a message, and so must `probe misaligned` when built with the
// sanitizers (a 16-byte load off its boundary: a GPU's "misaligned address").
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kThreads = 64;

// The stream launches must be on: handed out as the emulated masksub_platform.h hands out a device's stream.
cudaStream_t stream = nullptr;

// out[t] = the value thread t+1 wrote to shared memory, with or without the barrier in between.
template <bool BARRIER>
__global__ void neighbour_kernel(int tag, int* out) {
  __shared__ int values[kThreads];
  const int t = threadIdx.x;
  values[t] = tag + t;
  if (BARRIER) __syncthreads();
  out[t] = values[(t + 1) % kThreads];
}

__global__ void deadlock_kernel(float* out) {
  // Thread 0 waits at a second barrier; the rest of its warp waits for it in a shuffle.
  if (threadIdx.x == 0) __syncthreads();
  __syncthreads();
  out[threadIdx.x] = __shfl_xor_sync(0xFFFFFFFFu, static_cast<float>(threadIdx.x), 1);
}

__global__ void warp_sum_kernel(int* out) {
  int value = static_cast<int>(threadIdx.x % 32);
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  out[threadIdx.x] = value;
}

__global__ void index_kernel(int* out) {  // 2-D blocks in a 2-D grid: every (block, thread) writes its own slot
  const int block = blockIdx.y * gridDim.x + blockIdx.x;
  const int thread = threadIdx.y * blockDim.x + threadIdx.x;
  out[block * blockDim.x * blockDim.y + thread] = block * 1000 + thread;
}

__global__ void block_order_kernel(int* order, int* arrivals) {  // the place each block ran in (thread 0's ticket)
  if (threadIdx.x == 0) order[blockIdx.y * gridDim.x + blockIdx.x] = atomicAdd(arrivals, 1);
}

template <int ITEMS>
__global__ void sort_scan_kernel(const uint32_t* keys_in, uint32_t* keys_out, uint16_t* values_out, int* scan_out) {
  using Sort = cub::BlockRadixSort<uint32_t, kThreads, ITEMS, uint16_t>;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Sort::TempStorage sort_storage;
  __shared__ typename Scan::TempStorage scan_storage;
  uint32_t keys[ITEMS];
  uint16_t values[ITEMS];
  int flags[ITEMS], sums[ITEMS];
  for (int i = 0; i < ITEMS; ++i) {  // blocked input
    const int position = threadIdx.x * ITEMS + i;
    keys[i] = keys_in[position];
    values[i] = static_cast<uint16_t>(position);
    flags[i] = static_cast<int>(keys[i] % 3);
  }
  Sort(sort_storage).SortBlockedToStriped(keys, values);
  Scan(scan_storage).ExclusiveSum(flags, sums);
  for (int i = 0; i < ITEMS; ++i) {
    keys_out[i * kThreads + threadIdx.x] = keys[i];  // striped output: rank i * threads + t
    values_out[i * kThreads + threadIdx.x] = values[i];
    scan_out[threadIdx.x * ITEMS + i] = sums[i];
  }
}

// The approximate maths the loss kernels call (csrc/masksub_loss.cuh, masksub_loss_backward.cu), one element per
// thread: ex2.approx.ftz, exp2f and __fdividef.
struct FastMath {
  float *ex2, *exp2, *quotient;
};

__global__ void fast_math_kernel(const float* x, const float* a, const float* b, FastMath out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out.ex2[i] = __nvvm_ex2_approx_ftz_f(x[i]);
  out.exp2[i] = exp2f(x[i]);
  out.quotient[i] = __fdividef(a[i], b[i]);
}

// |got - exact| in units of the fp32 ulp at exact (exact a double).
double ulps_off(float got, double exact) {
  const double ulp = std::ldexp(1.0, std::ilogb(static_cast<float>(exact)) - 23);
  return std::fabs(got - exact) / ulp;
}

// got's distance in ulps (bit patterns of positive floats) from the correctly rounded fp32 of exact.
long bits_off(float got, double exact) {
  const float rounded = static_cast<float>(exact);
  int32_t a, b;
  std::memcpy(&a, &got, sizeof a);
  std::memcpy(&b, &rounded, sizeof b);
  return static_cast<long>(a) - b;
}

void report(const char* name, bool ok, const char* detail = "") {
  std::printf("%s %s%s%s\n", name, ok ? "ok" : "FAIL", ok ? "" : " ", ok ? "" : detail);
}

void check_barriers() {
  std::vector<int> out(kThreads);
  neighbour_kernel<true><<<1, kThreads, 0, stream>>>(100, out.data());
  bool ok = true;
  for (int t = 0; t < kThreads; ++t) ok = ok && out[t] == 100 + (t + 1) % kThreads;
  report("barrier", ok);
  // Without the barrier, thread 0 runs ahead of thread 1 and reads the previous launch's value: a race made visible.
  neighbour_kernel<false><<<1, kThreads, 0, stream>>>(200, out.data());
  report("missing_barrier_visible", out[0] != 201);
}

void check_warp_sum() {
  std::vector<int> out(kThreads);
  warp_sum_kernel<<<1, kThreads, 0, stream>>>(out.data());
  bool ok = true;
  for (int t = 0; t < kThreads; ++t) ok = ok && out[t] == 496;  // 0 + 1 + ... + 31 in every lane
  report("warp_sum", ok);
}

void check_indices() {
  const dim3 grid(3, 2), block(8, 4);
  std::vector<int> out(6 * 32, -1);
  index_kernel<<<grid, block, 0, stream>>>(out.data());
  bool ok = cudaGetLastError() == cudaSuccess;
  for (int b = 0; b < 6; ++b) {
    for (int t = 0; t < 32; ++t) ok = ok && out[b * 32 + t] == b * 1000 + t;
  }
  report("indices", ok);
  // blocks run the last first, then from the first up: neither the largest nor the smallest index runs last
  std::vector<int> order(6, -1);
  int arrivals = 0;
  block_order_kernel<<<dim3(3, 2), 32, 0, stream>>>(order.data(), &arrivals);
  report("block_order", order == std::vector<int>{1, 2, 3, 4, 5, 0} && arrivals == 6);
  index_kernel<<<1, 2048, 0, stream>>>(out.data());  // more than 1024 threads: refused, as the driver refuses it
  const cudaError_t error = cudaGetLastError();
  report("invalid_configuration", error == cudaErrorInvalidConfiguration, cudaGetErrorString(error));
  report("error_cleared", cudaGetLastError() == cudaSuccess);
}

// A launch off the handed-out stream (the default one, another device's) is refused and does not run.
void check_streams() {
  std::vector<int> out(32, -1);
  index_kernel<<<1, 32>>>(out.data());  // the default stream
  cudaError_t error = cudaGetLastError();
  bool ok = error == cudaErrorInvalidResourceHandle && out[0] == -1;
  const cudaStream_t other_device = ::masksub_emu::hand_out_stream(1);
  stream = ::masksub_emu::hand_out_stream(0);
  index_kernel<<<1, 32, 0, other_device>>>(out.data());
  ok = ok && cudaGetLastError() == cudaErrorInvalidResourceHandle && out[0] == -1 && other_device != stream;
  index_kernel<<<1, 32, 0, stream>>>(out.data());
  report("stream_checked", ok && cudaGetLastError() == cudaSuccess && out[0] == 0, cudaGetErrorString(error));
}

void check_sort_scan() {
  constexpr int kItems = 4, kCount = kThreads * kItems;
  std::vector<uint32_t> keys(kCount), sorted(kCount);
  std::vector<uint16_t> positions(kCount);
  std::vector<int> sums(kCount);
  for (int i = 0; i < kCount; ++i) keys[i] = static_cast<uint32_t>((i * 7919) % 61);  // many ties
  sort_scan_kernel<kItems><<<1, kThreads, 0, stream>>>(keys.data(), sorted.data(), positions.data(), sums.data());
  bool ok = true;
  for (int rank = 0; rank < kCount; ++rank) {
    ok = ok && keys[positions[rank]] == sorted[rank];
    if (rank > 0) {
      ok = ok && (sorted[rank - 1] < sorted[rank] ||
                  (sorted[rank - 1] == sorted[rank] && positions[rank - 1] < positions[rank]));  // stable
    }
  }
  report("radix_sort_stable_striped", ok);
  int running = 0;
  ok = true;
  for (int i = 0; i < kCount; ++i) {
    ok = ok && sums[i] == running;
    running += static_cast<int>(keys[i] % 3);
  }
  report("exclusive_sum", ok);
}

// The emulated ex2.approx, exp2f and __fdividef (tools/gpu_math.py's model): 2^x the correctly rounded result moved
// by -1, 0 or +1 ulp, both signs somewhere (a GPU's approximation, not the host's result), exp2f the same without
// flushing; a quotient within 2 ulp, one relative error per divisor; exact at the knots (2^x at integers, a
// power-of-two divisor of either sign, 2^126 itself), flushed or zero where the hardware flushes.
void check_fast_math() {
  constexpr int kCount = 1 << 15;
  std::vector<float> x(kCount), a(kCount), b(kCount), ex2(kCount), exp2(kCount), quotient(kCount);
  const FastMath out{ex2.data(), exp2.data(), quotient.data()};
  for (int i = 0; i < kCount; ++i) {
    x[i] = -120.0f + 240.0f * static_cast<float>(i) / kCount + 0.001f;  // non-integers across the normal range
    a[i] = 1.0f + static_cast<float>(i % 97) / 13.0f;
    b[i] = 1.0f + static_cast<float>(i / 97) / 7.0f;  // divisors each shared by up to 97 dividends
  }
  fast_math_kernel<<<kCount / kThreads, kThreads, 0, stream>>>(x.data(), a.data(), b.data(), out, kCount);
  bool within = true;
  int below = 0, above = 0;
  for (int i = 0; i < kCount; ++i) {
    const long off = bits_off(ex2[i], std::exp2(static_cast<double>(x[i])));
    within = within && off >= -1 && off <= 1 && exp2[i] == ex2[i];
    below += off < 0;
    above += off > 0;
  }
  report("ex2_within_1ulp_of_rounded_and_perturbed", within && below > kCount / 8 && above > kCount / 8);
  bool shared = true;
  below = above = 0;
  for (int i = 0; i < kCount; ++i) {
    const double exact = static_cast<double>(a[i]) / b[i], ratio = quotient[i] / exact;
    shared = shared && ulps_off(quotient[i], exact) <= 2.0;
    const int first = (i / 97) * 97;  // the first dividend of this divisor
    shared = shared && std::fabs(ratio - quotient[first] / (static_cast<double>(a[first]) / b[first])) < 0x1p-23;
    below += quotient[i] < static_cast<float>(exact);
    above += quotient[i] > static_cast<float>(exact);
  }
  report("fdividef_within_2ulp_one_error_per_divisor", shared && below > 0 && above > 0);
  const int knots = 2 * kThreads;
  for (int i = 0; i < knots; ++i) {
    x[i] = static_cast<float>(i - 126);  // 2^-126 .. 2^(knots - 127)
    a[i] = 1.0f + static_cast<float>(i % 7) / 3.0f;  // below 3: a / 2^-126 stays finite
    b[i] = (i % 2 ? -1.0f : 1.0f) * std::ldexp(1.0f, std::min(2 * i - 126, 126));  // +-2^-126 .. +-2^126
  }
  fast_math_kernel<<<2, kThreads, 0, stream>>>(x.data(), a.data(), b.data(), out, knots);
  bool exact = true;
  for (int i = 0; i < knots; ++i) {
    const float power = std::ldexp(1.0f, i - 126);
    exact = exact && ex2[i] == power && exp2[i] == power && quotient[i] == a[i] / b[i];
  }
  report("fast_math_exact_at_knots", exact);
  const float flush_x[] = {-130.5f, 1e-40f, -1e-40f, 3.0f}, flush_a[] = {1.0f, 5.0f, INFINITY, 2.0f},
              flush_b[] = {3.0f, 0x1p127f, -0x1.8p126f, INFINITY};
  float flush_ex2[4], flush_exp2[4], flush_q[4];
  fast_math_kernel<<<1, 4, 0, stream>>>(flush_x, flush_a, flush_b, FastMath{flush_ex2, flush_exp2, flush_q}, 4);
  // ex2: 2^-130.5 (subnormal) flushed, exp2f keeps it (within 2 ulp of a subnormal); 2^(+-1e-40) (a subnormal
  // argument, read as 0 by ex2): 1; 5 / 2^127: 0, inf / -1.5 2^126: NaN (the guide's __fdividef); 2 / inf: 0 (IEEE)
  const double tiny = std::exp2(-130.5);
  std::vector<float> least(kThreads);  // x in (-149.9, -148.6): exp2f's 2^x rounds to 2^-149, never moved to 0
  for (int i = 0; i < kThreads; ++i) least[i] = -149.9f + 1.3f * static_cast<float>(i) / kThreads;
  fast_math_kernel<<<1, kThreads, 0, stream>>>(least.data(), a.data(), b.data(), out, kThreads);
  bool kept = true;
  for (int i = 0; i < kThreads; ++i) kept = kept && (exp2[i] != 0.0f) == (std::exp2(double{least[i]}) >= 0x1p-150);
  report("fast_math_flushes", kept && flush_ex2[0] == 0.0f && std::fabs(flush_exp2[0] - tiny) <= 0x1p-148 &&
                                  flush_ex2[1] == 1.0f && flush_ex2[2] == 1.0f && flush_ex2[3] == 8.0f &&
                                  flush_q[1] == 0.0f && std::isnan(flush_q[2]) && flush_q[3] == 0.0f);
}

// Declares at most kThreads threads per block: a larger block must fail (a GPU refuses the launch).
__global__ void __launch_bounds__(kThreads) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

// One thread loads a 16-byte word from `words` + `offset_bytes` (as the kernels' uint4 paths load rows).
__global__ void vector_load_kernel(const unsigned char* words, int offset_bytes, unsigned* out) {
  const uint4 word = *reinterpret_cast<const uint4*>(words + offset_bytes);
  *out = word.x + word.y + word.z + word.w;
}


// Warp 0 reaches the barrier a round later than warp 1 (it shuffles first): the barrier must hold warp 1 until warp 0
// has written its half (out[t] = the value of thread t + 32 mod 64).
__global__ void late_warp_kernel(int tag, int* out) {
  __shared__ int values[kThreads];
  const int t = threadIdx.x;
  int value = tag + t;
  if (t < 32) value = __shfl_xor_sync(0xFFFFFFFFu, __shfl_xor_sync(0xFFFFFFFFu, value, 1), 1);
  values[t] = value;
  __syncthreads();
  out[t] = values[(t + 32) % kThreads];
}

// Threads from `live` on exit before the barrier (after the others arrived, in thread order): the barrier must stop
// waiting for them.
__global__ void early_exit_kernel(int live, int tag, int* out) {
  __shared__ int values[kThreads];
  const int t = threadIdx.x;
  if (t >= live) return;
  values[t] = tag + t;
  __syncthreads();
  out[t] = values[(t + 1) % live];
}

// Every thread of a 2-D block (blockDim.x < 32: the lane is the linear index % 32) gets its partner's linear index.
__global__ void partner_kernel(int lane_mask, int* out) {
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  out[t] = __shfl_xor_sync(0xFFFFFFFFu, t, lane_mask);
}

__global__ void index3_kernel(int* out) {  // 3-D blocks in a 3-D grid
  const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int size = blockDim.x * blockDim.y * blockDim.z;
  const int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  out[block * size + thread] = (block * 1000 + thread) * static_cast<int>(gridDim.x * gridDim.y * gridDim.z);
}

__global__ void count_kernel(int* ran) { atomicAdd(ran, 1); }  // also: atomicAdd hands back the old value

__global__ void ticket_kernel(int* counter, int* out) { out[threadIdx.x] = atomicAdd(counter, 2); }

// A refused shuffle (argv[2] names it): a lane mask, a width, an exited lane, a partial warp.
__global__ void bad_shuffle_kernel(int which, int* out) {
  const int t = threadIdx.x;
  if (which == 0) out[t] = __shfl_xor_sync(0x0000FFFFu, t, 1);
  if (which == 1) out[t] = __shfl_xor_sync(0xFFFFFFFFu, t, 1, 16);
  if (which == 2 && t % 32 < 16) return;   // the exited lanes come first in thread order
  if (which == 5 && t % 32 >= 16) return;  // they exit after the others entered the shuffle
  if (which >= 2 && which != 4) out[t] = __shfl_xor_sync(0xFFFFFFFFu, t, 1);
}

// 128 KiB of a thread's stack (a GPU gives a thread up to 512 KiB of local memory).
__global__ void deep_stack_kernel(int* out) {
  volatile char frame[128 << 10];
  for (int i = 0; i < static_cast<int>(sizeof frame); i += 4096) frame[i] = static_cast<char>(i >> 12);
  int sum = 0;
  for (int i = 0; i < static_cast<int>(sizeof frame); i += 4096) sum += frame[i];
  out[threadIdx.x] = sum;
}

void check_model_more() {
  std::vector<int> out(kThreads, -1);
  bool ok = true;
  for (int tag : {1000, 2000}) {
    late_warp_kernel<<<1, kThreads, 0, stream>>>(tag, out.data());
    for (int t = 0; t < kThreads; ++t) ok = ok && out[t] == tag + (t + 32) % kThreads;
  }
  report("barrier_holds_early_warp", ok);
  ok = true;
  for (int tag : {300, 400}) {
    early_exit_kernel<<<1, kThreads, 0, stream>>>(40, tag, out.data());
    for (int t = 0; t < 40; ++t) ok = ok && out[t] == tag + (t + 1) % 40;
  }
  report("exited_threads_leave_barrier", ok);
  ok = true;
  for (int lane_mask : {1, 2, 5, 8, 16, 31}) {
    partner_kernel<<<1, dim3(8, 8), 0, stream>>>(lane_mask, out.data());
    for (int t = 0; t < kThreads; ++t) ok = ok && out[t] == (t ^ lane_mask);
  }
  report("shuffle_partner_lanes", ok);
  const dim3 grid(2, 3, 2), block(4, 2, 4);
  std::vector<int> slots(12 * 32, -1);
  index3_kernel<<<grid, block, 0, stream>>>(slots.data());
  ok = cudaGetLastError() == cudaSuccess;
  for (int b = 0; b < 12; ++b) {
    for (int t = 0; t < 32; ++t) ok = ok && slots[b * 32 + t] == (b * 1000 + t) * 12;
  }
  report("indices_3d", ok);
  // refused as the driver refuses them, without running; the limits themselves run
  const dim3 refused[][2] = {{dim3(1), dim3(1025)}, {dim3(1), dim3(1, 1, 65)}, {dim3(1), dim3(0)},
                             {dim3(0), dim3(1)},    {dim3(1, 65536), dim3(1)}, {dim3(1, 1, 65536), dim3(1)}};
  ok = true;
  for (const auto& config : refused) {
    int ran = 0;
    count_kernel<<<config[0], config[1], 0, stream>>>(&ran);
    ok = ok && cudaGetLastError() == cudaErrorInvalidConfiguration && ran == 0;
  }
  const dim3 limits[][2] = {{dim3(1), dim3(1024)}, {dim3(1), dim3(2, 1, 64)}};
  for (const auto& config : limits) {
    int ran = 0;
    count_kernel<<<config[0], config[1], 0, stream>>>(&ran);
    ok = ok && cudaGetLastError() == cudaSuccess && ran == static_cast<int>(config[1].x * config[1].y * config[1].z);
  }
  report("launch_limits", ok);
  int counter = 5;
  ticket_kernel<<<1, kThreads, 0, stream>>>(&counter, out.data());
  ok = counter == 5 + 2 * kThreads;
  for (int t = 0; t < kThreads; ++t) ok = ok && out[t] == 5 + 2 * t;  // the old value, in thread order
  report("atomic_add_returns_old", ok);
  deep_stack_kernel<<<1, 2, 0, stream>>>(out.data());
  report("deep_stack", out[0] == 496 && out[1] == 496);
  // a thread that never handed out a stream: a launch on the default one is refused there too
  bool refused_fresh = false;
  std::thread([&] {
    int ran = 0;
    count_kernel<<<1, 1>>>(&ran);
    refused_fresh = cudaGetLastError() == cudaErrorInvalidResourceHandle && ran == 0;
  }).join();
  report("default_stream_refused_on_a_fresh_thread", refused_fresh);
}
}  // namespace

int main(int argc, char** argv) {
  stream = ::masksub_emu::hand_out_stream(0);
  if (argc > 1 && std::strcmp(argv[1], "deadlock") == 0) {
    std::vector<float> out(kThreads);
    deadlock_kernel<<<1, kThreads, 0, stream>>>(out.data());
    std::printf("deadlock not detected\n");
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "launch_bounds") == 0) {
    std::vector<int> out(2 * kThreads);
    bounded_kernel<<<1, kThreads, 0, stream>>>(out.data());  // within its bounds: fine
    std::printf("within bounds ok\n");
    std::fflush(stdout);
    bounded_kernel<<<1, 2 * kThreads, 0, stream>>>(out.data());  // twice its bounds: must stop the run
    std::printf("launch bounds not checked\n");
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "misaligned") == 0) {
    alignas(16) unsigned char words[48] = {};
    unsigned out = 0;
    vector_load_kernel<<<1, 1, 0, stream>>>(words, 16, &out);  // aligned: fine
    std::printf("aligned load ok\n");
    std::fflush(stdout);
    vector_load_kernel<<<1, 1, 0, stream>>>(words, 4, &out);  // 4 bytes off: must stop the run
    std::printf("misaligned load not detected\n");
    return 0;
  }
  if (argc > 2 && std::strcmp(argv[1], "refuse") == 0) {  // must abort with a message
    const char* names[] = {"shuffle_mask", "shuffle_width", "shuffle_exited_lane", "shuffle_partial_warp",
                           "dynamic_shared", "shuffle_lane_exits_later"};
    int which = -1;
    for (int i = 0; i < 6; ++i) which = std::strcmp(argv[2], names[i]) == 0 ? i : which;
    std::vector<int> out(kThreads);
    if (which == 4) {
      count_kernel<<<1, 1, 16, stream>>>(out.data());
    } else if (which >= 0) {
      bad_shuffle_kernel<<<1, which == 3 ? 48 : kThreads, 0, stream>>>(which, out.data());
    }
    std::printf("%s not refused\n", argv[2]);
    return 0;
  }
  check_barriers();
  check_warp_sum();
  check_indices();
  check_streams();
  check_sort_scan();
  check_fast_math();
  check_model_more();
  return 0;
}
