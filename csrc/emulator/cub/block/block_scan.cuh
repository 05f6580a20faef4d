// cub::BlockScan for the CUDA emulator (csrc/emulator/emulator.h), from its documented contract, only the member
// csrc/ uses:
//   ExclusiveSum(input, output): output[i] of thread t = the sum of every item before item i of thread t in the
//   blocked arrangement (all items of threads < t, then items < i of thread t). Ends without a barrier, like cub.
#pragma once

namespace cub {

template <typename T, int BLOCK_THREADS>
class BlockScan {
 public:
  struct TempStorage {
    T totals[BLOCK_THREADS];
  };

  explicit BlockScan(TempStorage& storage) : storage_(storage) {}

  template <int ITEMS>
  void ExclusiveSum(T (&input)[ITEMS], T (&output)[ITEMS]) {
    const int tid = ::masksub_emu::context().linear;
    T total = T(0);
    for (int i = 0; i < ITEMS; ++i) total += input[i];
    storage_.totals[tid] = total;
    __syncthreads();
    T running = T(0);
    for (int t = 0; t < tid; ++t) running += storage_.totals[t];
    for (int i = 0; i < ITEMS; ++i) {
      output[i] = running;
      running += input[i];
    }
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
