// The kernel device of the real build: CUDA tensors, their device guard, their current stream.
//
// One of a pair, chosen by the include path: this one (setup.py puts csrc/platform/ on it) and the CUDA emulator's
// csrc/emulator/masksub_platform.h (CPU tensors standing for CUDA ones). Everything that differs between the two
// builds is here, and nothing else: bindings.cpp and the kernels compile unchanged in both. It lives in a folder of
// its own because the emulator builds copies of the files directly in csrc/, and a quoted include looks in the
// including file's folder first: a copy of this file beside them would shadow the emulated one.
//
// The stream comes from c10/cuda/CUDAStream.h (c10::cuda::getCurrentCUDAStream, the stream that
// at::cuda::getCurrentCUDAStream returns), not from ATen/cuda/CUDAContext.h: that header pulls in the cuBLAS,
// cuSPARSE and cuSOLVER headers, which a bare CUDA toolkit may lack and these kernels do not use.
#pragma once

#include <c10/core/Device.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

namespace masksub::platform {

// The device type whose tensors the kernels take, and how argument errors name such a tensor.
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CUDA;
constexpr const char* kKernelTensor = "CUDA tensor";

// Makes `device` current for the allocations and launches of its scope.
using DeviceGuard = c10::cuda::CUDAGuard;

// The stream torch runs its own work on for `device` (torch.cuda.current_stream(device)): launches there are ordered
// with the producers and consumers of their tensors, and honour `with torch.cuda.stream(...)`.
inline cudaStream_t current_stream(c10::Device device) {
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
}

// The index of an index-less "cuda" device: the current device.
inline c10::DeviceIndex current_device_index() { return c10::cuda::current_device(); }

}  // namespace masksub::platform
