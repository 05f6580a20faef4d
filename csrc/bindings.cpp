// masksub_kernels._C: the Python module. Each op's bindings are defined in its own file (bindings_*.cpp; the
// checks they share and their declarations in bindings.h); this file only registers them.
#include <torch/extension.h>

#include "bindings.h"

using namespace masksub::bindings;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "masksub_kernels CUDA extension: the `cuda` backend of masksub_kernels' ops (CUDA tensors only)";
  m.attr("MAX_SELECT_TOKENS") = masksub::kMaxSelectTokens;
  // the digest of csrc/ it was built from (masksub_kernels/_sources.py; -D by setup.py and the CUDA emulator's build):
  // the package refuses a stale extension, one built from other sources than its checkout's csrc/ holds now
#define MASKSUB_STRINGIFY_(x) #x
#define MASKSUB_STRINGIFY(x) MASKSUB_STRINGIFY_(x)
  m.attr("SOURCES_DIGEST") = MASKSUB_STRINGIFY(MASKSUB_SOURCES_DIGEST);
  m.def("select_tokens", &select_tokens,
        "(ids int64 [B, K], inv int32 [B, N] or None): per sample the K positions with the smallest Philox draws "
        "(ties by position), ascending-draw order or ascending position when ordered; optional bool [B, N] "
        "always_keep (kept first, by position) and drop_first (dropped first, by position; always_keep wins)",
        py::arg("seed"), py::arg("seed_tensor"), py::arg("batch_size"), py::arg("num_tokens"), py::arg("num_keep"),
        py::arg("ordered"), py::arg("write_inverse"), py::arg("device"), py::arg("always_keep") = py::none(),
        py::arg("drop_first") = py::none());
  m.def("gather_tokens", &gather_tokens,
        "y [B, P+K, D]: y[:, :P] = x[:, :P], y[:, P+j] = x[:, P+ids[:, j]] (x any strides, ids int64 or int32)",
        py::arg("x"), py::arg("ids"), py::arg("num_prefix_tokens"));
  m.def("select_gather_tokens", &select_gather_tokens,
        "(y [B, P+K, D], ids int64 [B, K], inv int32 [B, N]): select_tokens (with inv) then gather_tokens, in one "
        "launch where N is small",
        py::arg("x"), py::arg("seed"), py::arg("seed_tensor"), py::arg("num_keep"), py::arg("num_prefix_tokens"),
        py::arg("ordered"), py::arg("always_keep") = py::none(), py::arg("drop_first") = py::none());
  m.def("scatter_tokens", &scatter_tokens,
        "grad_x [B, P+N, D]: prefix rows and kept rows (via inv) from grad_y, dropped rows zero; each element "
        "written once",
        py::arg("grad_y"), py::arg("inv"), py::arg("num_prefix_tokens"));
  m.def("grid_cell_mask", &grid_cell_mask,
        "bool [B, Lc]: True for the cells each sample removes (all but random_keep_indices' kept cells)",
        py::arg("seed"), py::arg("seed_tensor"), py::arg("batch_size"), py::arg("num_cells"), py::arg("num_keep"),
        py::arg("device"));
  m.def("mask_image_grid", &mask_image_grid,
        "images [B, C, H, W] with the removed cells set to fill_value, in the images' layout",
        py::arg("images"), py::arg("cell_mask"), py::arg("cell_size"), py::arg("fill_value"));
  m.def("mask_image_grid_random", &mask_image_grid_random,
        "(images [B, C, H, W] with the removed cells set to fill_value, in the images' layout; bool cell mask "
        "[B, H / cell_size, W / cell_size], the cells grid_cell_mask removes)",
        py::arg("images"), py::arg("seed"), py::arg("seed_tensor"), py::arg("cell_size"), py::arg("num_keep"),
        py::arg("fill_value"));
  m.def("mask_tokens_grid_forward", &mask_tokens_grid_forward,
        "contiguous [B, H, W, C]: the mask token on removed cells, the tokens elsewhere", py::arg("tokens"),
        py::arg("mask_token"), py::arg("cell_mask"), py::arg("cell_size"));
  m.def("mask_tokens_grid_random", &mask_tokens_grid_random,
        "(contiguous [B, H, W, C]: the mask token on the removed cells, the tokens elsewhere; bool cell mask "
        "[B, H / cell_size, W / cell_size], the cells grid_cell_mask removes)",
        py::arg("tokens"), py::arg("mask_token"), py::arg("seed"), py::arg("seed_tensor"), py::arg("cell_size"),
        py::arg("num_keep"));
  m.def("mask_tokens_grid_backward", &mask_tokens_grid_backward,
        "(grad_tokens [B, H, W, C] or [0], grad_mask_token [C] or [0]); grad_mask_token summed in a fixed order",
        py::arg("grad_out"), py::arg("cell_mask"), py::arg("cell_size"), py::arg("need_tokens_grad"),
        py::arg("need_mask_grad"));
  m.def("masksub_loss_forward", &masksub_loss_forward,
        "fp32 [9, M]: per-row main and sub losses, then the CE stats the backward reads", py::arg("logits"),
        py::arg("sub_logits"), py::arg("target"), py::arg("bce"), py::arg("label_smoothing"),
        py::arg("ignore_index"), py::arg("temperature"), py::arg("target_threshold"));
  m.def("masksub_loss_backward", &masksub_loss_backward,
        "(d logits or [0], d sub_logits or [0]) in the logits' dtype, from the forward's output", py::arg("grad_main"),
        py::arg("grad_sub"), py::arg("out"), py::arg("logits"), py::arg("sub_logits"), py::arg("target"),
        py::arg("bce"), py::arg("label_smoothing"), py::arg("ignore_index"), py::arg("temperature"),
        py::arg("target_threshold"));
  m.def("masksub_loss_reduced_forward", &masksub_loss_reduced_forward,
        "(fp32 [4] (a main + b sub, main, sub, d), fp32 [9, M] as masksub_loss_forward's, fp32 [1] d): the per-row "
        "losses reduced ('mean' or 'sum') in the same launch",
        py::arg("logits"), py::arg("sub_logits"), py::arg("target"), py::arg("bce"), py::arg("label_smoothing"),
        py::arg("ignore_index"), py::arg("temperature"), py::arg("target_threshold"), py::arg("main_weight"),
        py::arg("sub_weight"), py::arg("mean"));
  m.def("masksub_loss_reduced_backward", &masksub_loss_reduced_backward,
        "(d logits or [0], d sub_logits or [0]) in the logits' dtype, from the gradient [4] of the reduced losses",
        py::arg("grad"), py::arg("need_main"), py::arg("need_sub"), py::arg("d"), py::arg("out"), py::arg("logits"),
        py::arg("sub_logits"), py::arg("target"), py::arg("bce"), py::arg("label_smoothing"),
        py::arg("ignore_index"), py::arg("temperature"), py::arg("target_threshold"), py::arg("main_weight"),
        py::arg("sub_weight"));
}
