// Calls csrc's launchers (csrc/masksub_kernels.h) as tools/perf_model/csrc_launches.py asks, one command a line on
// stdin, and lets record_launches.h print their launches. Pointers are fake addresses (never dereferenced: no
// kernel runs), chosen by the caller so that their alignment is the real tensors'.
//
//   <launcher> <dtype> <integers...>   dtype: float32 | float16 | bfloat16 | float64 (ignored by select)
//
// After each command: {"status": <the launcher's cudaError_t>}.
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "masksub_kernels.h"

namespace {

using masksub::ImageStrides;
using masksub::LossProblem;
using masksub::TargetKind;

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
cudaError_t with_float(const std::string& dtype, F&& f) {
  if (dtype == "float32") return f(Tag<float>{});
  if (dtype == "float16") return f(Tag<__half>{});
  if (dtype == "bfloat16") return f(Tag<__nv_bfloat16>{});
  if (dtype == "float64") return f(Tag<double>{});
  return cudaErrorInvalidValue;
}

template <typename T = void>
T* ptr(int64_t address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

// rows classes stride_logits sub stride_sub target stride_target target_kind bce (from a[i] on)
LossProblem problem(const std::vector<int64_t>& a, size_t i) {
  LossProblem p{};
  p.rows = a[i];
  p.classes = a[i + 1];
  p.stride_logits = a[i + 2];
  p.sub_logits = ptr(a[i + 3]);
  p.stride_sub = a[i + 4];
  p.target = ptr(a[i + 5]);
  p.stride_target = a[i + 6];
  p.target_kind = static_cast<TargetKind>(a[i + 7]);
  p.bce = a[i + 8] != 0;
  p.temperature = 1.0f;
  p.ignore_index = -100;
  return p;
}

cudaError_t run(const std::string& launcher, const std::string& dtype, const std::vector<int64_t>& a) {
  if (launcher == "select_tokens") {  // B N K ordered ids inv removed
    return masksub::launch_select_tokens(0, nullptr, a[0], a[1], a[2], a[3] != 0, masksub::kNoPositionFlags,
                                         masksub::kNoPositionFlags, ptr<int64_t>(a[4]), ptr<int32_t>(a[5]),
                                         ptr<uint8_t>(a[6]), nullptr);
  }
  return with_float(dtype, [&](auto tag) -> cudaError_t {
    using T = typename decltype(tag)::type;
    if (launcher == "gather_tokens") {  // x sxb sxs ids sib sik y B P N K D (ids int64)
      return masksub::launch_gather_tokens<T, int64_t>(ptr<const T>(a[0]), a[1], a[2], ptr<const int64_t>(a[3]), a[4],
                                                       a[5], ptr<T>(a[6]), a[7], a[8], a[9], a[10], a[11], nullptr);
    }
    if (launcher == "select_gather_tokens") {  // x sxb sxs y ids inv B P N K D ordered (no position flags)
      return masksub::launch_select_gather_tokens<T>(0, nullptr, ptr<const T>(a[0]), a[1], a[2], ptr<T>(a[3]),
                                                     ptr<int64_t>(a[4]), ptr<int32_t>(a[5]), a[6], a[7], a[8], a[9],
                                                     a[10], a[11] != 0, masksub::kNoPositionFlags,
                                                     masksub::kNoPositionFlags, nullptr);
    }
    if (launcher == "scatter_tokens") {  // gy sgb sgs inv svb svn gx B P N K D
      return masksub::launch_scatter_tokens<T>(ptr<const T>(a[0]), a[1], a[2], ptr<const int32_t>(a[3]), a[4], a[5],
                                               ptr<T>(a[6]), a[7], a[8], a[9], a[10], a[11], nullptr);
    }
    if (launcher == "mask_image_grid") {  // x (4 strides) y (4 strides) cells B C H W S
      return masksub::launch_mask_image_grid<T>(ptr<const T>(a[0]), ImageStrides{a[1], a[2], a[3], a[4]},
                                                ptr<T>(a[5]), ImageStrides{a[6], a[7], a[8], a[9]},
                                                ptr<const uint8_t>(a[10]), a[11], a[12], a[13], a[14], a[15], T{},
                                                nullptr);
    }
    if (launcher == "mask_image_grid_random") {  // x (4 strides) y (4 strides) cells B C H W S num_keep
      return masksub::launch_mask_image_grid_random<T>(ptr<const T>(a[0]), ImageStrides{a[1], a[2], a[3], a[4]},
                                                       ptr<T>(a[5]), ImageStrides{a[6], a[7], a[8], a[9]},
                                                       ptr<uint8_t>(a[10]), 0, nullptr, a[16], a[11], a[12], a[13],
                                                       a[14], a[15], T{}, nullptr);
    }
    if (launcher == "mask_tokens_grid_forward") {  // tokens sb sh sw mask_token cells out B H W C S
      return masksub::launch_mask_tokens_grid_forward<T>(ptr<const T>(a[0]), a[1], a[2], a[3], ptr<const T>(a[4]),
                                                         ptr<const uint8_t>(a[5]), ptr<T>(a[6]), a[7], a[8], a[9],
                                                         a[10], a[11], nullptr);
    }
    if (launcher == "mask_tokens_grid_random") {  // tokens sb sh sw mask_token cells out B H W C S num_keep
      return masksub::launch_mask_tokens_grid_random<T>(ptr<const T>(a[0]), a[1], a[2], a[3], ptr<const T>(a[4]),
                                                        ptr<uint8_t>(a[5]), 0, nullptr, a[12], ptr<T>(a[6]), a[7],
                                                        a[8], a[9], a[10], a[11], nullptr);
    }
    if (launcher == "mask_tokens_grid_backward") {  // grad sb sh sw cells grad_tokens grad_mask partials B H W C S
      return masksub::launch_mask_tokens_grid_backward<T>(ptr<const T>(a[0]), a[1], a[2], a[3],
                                                          ptr<const uint8_t>(a[4]), ptr<T>(a[5]), ptr<T>(a[6]),
                                                          ptr(a[7]), a[8], a[9], a[10], a[11], a[12], nullptr);
    }
    if (launcher == "masksub_loss_forward") {  // logits (problem: 9) out workspace tickets
      return masksub::launch_masksub_loss_forward<T>(ptr<const T>(a[0]), problem(a, 1), ptr<float>(a[10]),
                                                     ptr<float>(a[11]), ptr<int32_t>(a[12]), nullptr, nullptr);
    }
    if (launcher == "masksub_loss_reduced_forward") {  // logits (problem: 9) out workspace tickets reduced d ticket
      const masksub::LossReduction reduce{ptr<float>(a[13]), ptr<float>(a[14]), ptr<int32_t>(a[15]), 0.5f, 0.5f,
                                          true};
      return masksub::launch_masksub_loss_forward<T>(ptr<const T>(a[0]), problem(a, 1), ptr<float>(a[10]),
                                                     ptr<float>(a[11]), ptr<int32_t>(a[12]), &reduce, nullptr);
    }
    if (launcher == "masksub_loss_backward" || launcher == "masksub_loss_reduced_backward") {
      // logits (problem: 9) out gm sgm gs sgs dz ds, then (reduced) d: gm = gs the gradient [4]
      const bool reduce = launcher == "masksub_loss_reduced_backward";
      const masksub::LossReducedGrad reduced{ptr<const float>(reduce ? a[17] : 0), 0.5f, 0.5f};
      return masksub::launch_masksub_loss_backward<T>(ptr<const T>(a[0]), problem(a, 1), ptr<const float>(a[10]),
                                                      ptr<const float>(a[11]), a[12], ptr<const float>(a[13]), a[14],
                                                      ptr<T>(a[15]), ptr<T>(a[16]), reduce ? &reduced : nullptr,
                                                      nullptr);
    }
    return cudaErrorInvalidValue;
  });
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream words(line);
    std::string launcher, dtype;
    if (!(words >> launcher >> dtype)) continue;
    std::vector<int64_t> args;
    for (int64_t value; words >> value;) args.push_back(value);
    const cudaError_t status = run(launcher, dtype, args);
    std::printf("{\"status\": %d}\n", static_cast<int>(status));
    std::fflush(stdout);
  }
  return 0;
}
