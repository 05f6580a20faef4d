// Philox4x32-10 (Salmon et al., 2011), the counter-based generator behind every mask, bit for bit the one of
// masksub_kernels/_philox.py and of Triton's tl.randint(seed, offset) with an int64 offset:
//
//   counter (c0, c1, c2, c3) = (lo32(offset), hi32(offset), 0, 0),   key (k0, k1) = (lo32(seed), hi32(seed))
//   each of 10 rounds, with A = 0xD2511F53, B = 0xCD9E8D57:
//     c0' = hi32(B * c2) ^ c1 ^ k0      c1' = lo32(B * c2)
//     c2' = hi32(A * c0) ^ c3 ^ k1      c3' = lo32(A * c0)
//     k0 += 0x9E3779B9,  k1 += 0xBB67AE85   (mod 2^32)
//   draw = c0 after the last round.
//
// offset = row * num_positions + position (row = sample, position = token or cell), so one 64-bit seed and the
// element's coordinates alone decide its draw: every backend and device gives the same mask for the same seed.
#pragma once

#include <cstdint>

namespace masksub {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

__device__ __forceinline__ uint32_t philox_draw(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset);
  uint32_t c1 = static_cast<uint32_t>(offset >> 32);
  uint32_t c2 = 0u;
  uint32_t c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < kPhiloxRounds; ++round) {
    // __umulhi is the high word of the full 64-bit product; unsigned 32-bit multiplication wraps to the low word.
    const uint32_t next_c0 = __umulhi(kPhiloxRoundB, c2) ^ c1 ^ k0;
    const uint32_t next_c2 = __umulhi(kPhiloxRoundA, c0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * c2;
    c3 = kPhiloxRoundA * c0;
    c0 = next_c0;
    c2 = next_c2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
}

}  // namespace masksub
