// Probe kernels for the CUDA emulator (csrc/emulator/emulator.h), built and run by tests/test_cuda_emulator.py:
// each check prints "<name> ok" or "<name> FAIL <detail>"; `probe deadlock` and `probe launch_bounds` (a block larger
// than its kernel's __launch_bounds__) must abort with a message, and so must `probe misaligned` when built with the
// sanitizers (a 16-byte load off its boundary: a GPU's "misaligned address").
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
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

// Declares at most kThreads threads per block: a larger block must fail (a GPU refuses the launch).
__global__ void __launch_bounds__(kThreads) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

// One thread loads a 16-byte word from `words` + `offset_bytes` (as the kernels' uint4 paths load rows).
__global__ void vector_load_kernel(const unsigned char* words, int offset_bytes, unsigned* out) {
  const uint4 word = *reinterpret_cast<const uint4*>(words + offset_bytes);
  *out = word.x + word.y + word.z + word.w;
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
  check_barriers();
  check_warp_sum();
  check_indices();
  check_streams();
  check_sort_scan();
  return 0;
}
