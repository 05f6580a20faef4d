// cub::BlockRadixSort for the CUDA emulator (csrc/emulator/emulator.h), from its documented contract, only the
// members csrc/ uses:
//   SortBlockedToStriped(keys, values): the block's BLOCK_THREADS x ITEMS (key, value) pairs, given in a blocked
//   arrangement (item i of thread t is element t * ITEMS + i), sorted ascending by key, *stably* ("BlockRadixSort
//   is stable", cub/block/block_radix_sort.cuh), and handed back striped (item i of thread t has rank
//   i * BLOCK_THREADS + t). Like cub, it ends without a barrier: reusing the storage needs a __syncthreads().
// The sorted pairs are read back from the start of the storage, so a caller that reuses it without that barrier
// (a union with its own shared arrays, as cub's documentation suggests) overwrites pairs that other threads have
// not read yet: under the emulator's schedule the race shows in the results.
#pragma once

#include <algorithm>

namespace cub {

template <typename Key, int BLOCK_THREADS, int ITEMS, typename Value>
class BlockRadixSort {
  static constexpr int kItems = BLOCK_THREADS * ITEMS;

 public:
  struct Item {
    Key key;
    Value value;
  };
  struct TempStorage {
    Item items[kItems];
  };

  explicit BlockRadixSort(TempStorage& storage) : storage_(storage) {}

  void SortBlockedToStriped(Key (&keys)[ITEMS], Value (&values)[ITEMS]) {
    const int tid = ::masksub_emu::context().linear;
    for (int i = 0; i < ITEMS; ++i) storage_.items[tid * ITEMS + i] = {keys[i], values[i]};
    __syncthreads();
    if (tid == 0) {
      std::stable_sort(storage_.items, storage_.items + kItems,
                       [](const Item& a, const Item& b) { return a.key < b.key; });
    }
    __syncthreads();
    for (int i = 0; i < ITEMS; ++i) {
      const Item& item = storage_.items[i * BLOCK_THREADS + tid];
      keys[i] = item.key;
      values[i] = item.value;
    }
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
