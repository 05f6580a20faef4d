// Element conversions for the float kernels, explicit because torch builds extensions with
// __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__ (no implicit __half <-> float).
//
//   Acc<T>          the accumulation type: double for double, float for the others
//   to_acc<A>(v)    T -> A exactly (fp16/bf16/fp32 widen exactly; double -> float rounds to nearest)
//   from_acc<T>(v)  A -> T rounded to nearest even
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace masksub {
namespace detail {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using Acc = typename AccOf<T>::type;

template <typename A>
__device__ __forceinline__ A to_acc(float v) {
  return static_cast<A>(v);
}
template <typename A>
__device__ __forceinline__ A to_acc(double v) {
  return static_cast<A>(v);
}
template <typename A>
__device__ __forceinline__ A to_acc(__half v) {
  return static_cast<A>(__half2float(v));
}
template <typename A>
__device__ __forceinline__ A to_acc(__nv_bfloat16 v) {
  return static_cast<A>(__bfloat162float(v));
}

template <typename T>
struct FromAcc {
  template <typename A>
  __device__ __forceinline__ static T convert(A v) {
    return static_cast<T>(v);
  }
};
template <>
struct FromAcc<__half> {
  __device__ __forceinline__ static __half convert(float v) { return __float2half_rn(v); }
};
template <>
struct FromAcc<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 convert(float v) { return __float2bfloat16_rn(v); }
};

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  return FromAcc<T>::convert(v);
}

}  // namespace detail
}  // namespace masksub
