// cub::BlockRadixSort for the CUDA emulator (csrc/emulator/emulator.h), from its documented contract, only the
// members csrc/ uses:
//   SortBlockedToStriped(keys, values): the block's BLOCK_THREADS x ITEMS (key, value) pairs, given in a blocked
//   arrangement (item i of thread t is element t * ITEMS + i), sorted ascending by key, *stably* ("BlockRadixSort
//   is stable", cub/block/block_radix_sort.cuh), and handed back striped (item i of thread t has rank
//   i * BLOCK_THREADS + t). Like cub, it ends without a barrier: reusing the storage needs a __syncthreads().
#pragma once

#include <algorithm>
#include <numeric>

namespace cub {

template <typename Key, int BLOCK_THREADS, int ITEMS, typename Value>
class BlockRadixSort {
  static constexpr int kItems = BLOCK_THREADS * ITEMS;

 public:
  struct TempStorage {
    Key keys[kItems];
    Value values[kItems];
    int order[kItems];
  };

  explicit BlockRadixSort(TempStorage& storage) : storage_(storage) {}

  void SortBlockedToStriped(Key (&keys)[ITEMS], Value (&values)[ITEMS]) {
    const int tid = ::masksub_emu::context().linear;
    for (int i = 0; i < ITEMS; ++i) {
      storage_.keys[tid * ITEMS + i] = keys[i];
      storage_.values[tid * ITEMS + i] = values[i];
    }
    __syncthreads();
    if (tid == 0) {
      std::iota(storage_.order, storage_.order + kItems, 0);
      std::stable_sort(storage_.order, storage_.order + kItems,
                       [this](int a, int b) { return storage_.keys[a] < storage_.keys[b]; });
    }
    __syncthreads();
    for (int i = 0; i < ITEMS; ++i) {
      const int source = storage_.order[i * BLOCK_THREADS + tid];
      keys[i] = storage_.keys[source];
      values[i] = storage_.values[source];
    }
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
