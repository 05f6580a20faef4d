// cub::BlockRadixSort for the CUDA emulator (csrc/emulator/emulator.h), from its documented contract, only the
// members csrc/ uses:
//   SortBlockedToStriped(keys, values, begin_bit = 0, end_bit = 8 * sizeof(Key)): the block's BLOCK_THREADS x ITEMS
//   (key, value) pairs, given in a blocked arrangement (item i of thread t is element t * ITEMS + i), sorted
//   ascending by the key's bits [begin_bit, end_bit), *stably* ("BlockRadixSort is stable",
//   cub/block/block_radix_sort.cuh), and handed back striped (item i of thread t has rank i * BLOCK_THREADS + t);
//   Sort(keys, values, begin_bit, end_bit): the same, handed back blocked (item i of thread t has rank
//   t * ITEMS + i). Like cub, they end without a barrier: reusing the storage needs a __syncthreads().
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

  void SortBlockedToStriped(Key (&keys)[ITEMS], Value (&values)[ITEMS], int begin_bit = 0,
                            int end_bit = static_cast<int>(sizeof(Key) * 8)) {
    SortAndHandBack(keys, values, begin_bit, end_bit, /*striped=*/true);
  }

  void Sort(Key (&keys)[ITEMS], Value (&values)[ITEMS], int begin_bit = 0,
            int end_bit = static_cast<int>(sizeof(Key) * 8)) {
    SortAndHandBack(keys, values, begin_bit, end_bit, /*striped=*/false);
  }

 private:
  void SortAndHandBack(Key (&keys)[ITEMS], Value (&values)[ITEMS], int begin_bit, int end_bit, bool striped) {
    const int tid = ::masksub_emu::context().linear;
    for (int i = 0; i < ITEMS; ++i) storage_.items[tid * ITEMS + i] = {keys[i], values[i]};
    __syncthreads();
    if (tid == 0) {
      // the key bits [begin_bit, end_bit) as an unsigned number (cub sorts unsigned keys by their bits)
      const auto bits = [begin_bit, end_bit](Key key) {
        const unsigned long long word = static_cast<unsigned long long>(key);
        const int width = end_bit - begin_bit;
        const unsigned long long mask = width >= 64 ? ~0ull : (1ull << width) - 1ull;
        return (word >> begin_bit) & mask;
      };
      std::stable_sort(storage_.items, storage_.items + kItems,
                       [&bits](const Item& a, const Item& b) { return bits(a.key) < bits(b.key); });
    }
    __syncthreads();
    for (int i = 0; i < ITEMS; ++i) {
      const Item& item = storage_.items[striped ? i * BLOCK_THREADS + tid : tid * ITEMS + i];
      keys[i] = item.key;
      values[i] = item.value;
    }
  }

  TempStorage& storage_;
};

}  // namespace cub
