// The kernel device of the CUDA emulator's build: CPU tensors stand for CUDA ones (see emulator.h).
//
// The twin of csrc/platform/masksub_platform.h, found first on the emulator build's include path (-I csrc/emulator);
// the same names with the same meaning, and nothing else. emulator.h is force-included before it.
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime.h>

namespace masksub::platform {

constexpr c10::DeviceType kKernelDevice = c10::DeviceType::CPU;
constexpr const char* kKernelTensor = "CPU tensor (this is the CUDA emulator)";

// The host has a single device: nothing to make current.
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

// A sentinel stream of `device`; every launch checks that it is on the stream handed out (emulator.h), so a binding
// that launches on another stream, or on none, fails its tests here as it would misbehave on a GPU.
inline cudaStream_t current_stream(c10::Device device) { return ::masksub_emu::hand_out_stream(device.index()); }

// CPU tensors carry no device index: an index-less device stays index-less.
inline c10::DeviceIndex current_device_index() { return -1; }

}  // namespace masksub::platform
