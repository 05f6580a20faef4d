// The launch recorder of tools/perf_model (csrc_launches.py): csrc's own launchers run on the host, and each
// `kernel<<<grid, block, smem, stream>>>(args)` prints what it would launch instead of launching it.
//
// Built like the CUDA emulator (tools/cuda_emulator.py): the host compiler, csrc/emulator/emulator.h force-included
// first (so that the kernels' bodies compile on the host; none of them runs), then this header, with every launch
// rewritten as `::masksub_record::launch<kernel>(grid, block, smem, stream)(args)`. Passing the kernel as a template
// argument is what names the instantiation: __PRETTY_FUNCTION__ of launch<K> spells K with all its template
// arguments (select_tokens_kernel<128, 2, false>), including those that no kernel parameter shows.
// One JSON object per launch, on stdout: {"kernel": "<GCC's spelling>", "grid": [x, y, z], "block": [x, y, z],
// "shared": <dynamic bytes>, "args": [...]} with integer and pointer arguments as numbers, others as null.
#pragma once

#include <cstdint>
#include <cstdio>
#include <type_traits>

namespace masksub_record {

template <typename T>
void print_arg(const T& value) {
  if constexpr (std::is_pointer_v<T>) {
    std::printf("%llu", static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(value)));
  } else if constexpr (std::is_same_v<T, bool>) {
    std::printf(value ? "true" : "false");
  } else if constexpr (std::is_integral_v<T> || std::is_enum_v<T>) {
    std::printf("%lld", static_cast<long long>(value));
  } else {
    std::printf("null");  // structs (row sources, strides, problems) and floats: the model does not read them
  }
}

struct Recorder {
  const char* kernel;
  dim3 grid, block;
  size_t shared;

  template <typename... Args>
  void operator()(const Args&... args) const {
    std::printf("{\"kernel\": \"%s\", \"grid\": [%u, %u, %u], \"block\": [%u, %u, %u], \"shared\": %zu, \"args\": [",
                kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z, shared);
    const char* separator = "";
    ((std::printf("%s", separator), print_arg(args), separator = ", "), ...);
    std::printf("]}\n");
  }
};

template <auto Kernel>
const char* kernel_name() {
  return __PRETTY_FUNCTION__;  // "... [with auto Kernel = <the kernel>]": csrc_launches.py keeps the kernel
}

template <auto Kernel>
Recorder launch(dim3 grid, dim3 block, size_t shared = 0, cudaStream_t = nullptr) {
  return {kernel_name<Kernel>(), grid, block, shared};
}

}  // namespace masksub_record
