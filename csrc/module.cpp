// The extension module: the jem_fast operator namespace and build information.
// Each op's schema lives next to its host code (csrc/<area>/<op>.cpp, TORCH_LIBRARY_FRAGMENT);
// ops are reached through torch.ops.jem_fast.*, never bound one by one through pybind11.
#include <torch/extension.h>
#include <torch/library.h>

#ifndef JEM_FAST_CUDA_ARCHS
#define JEM_FAST_CUDA_ARCHS ""
#endif

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                          std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
#ifdef WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." +
                         std::to_string((CUDART_VERSION % 1000) / 10);
  info["cuda_archs"] = std::string(JEM_FAST_CUDA_ARCHS);
#else
  info["with_cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = std::string();
#endif
  pybind11::list cpu_kernels, cuda_kernels;
  for (const char* op : {"vicreg_forward", "vicreg_backward", "barlow_twins_forward",
                         "barlow_twins_backward", "info_nce_lse", "info_nce_lse_backward",
                         "info_nce_self_lse", "info_nce_self_lse_backward",
                         "sinkhorn_knopp", "sinkhorn_column_stats", "sinkhorn_row_potential",
                         "sinkhorn_plan", "multiview_cross_entropy",
                         "multiview_cross_entropy_backward", "centered_softmax",
                         "assign_to_centroids", "cosine_similarity_rows",
                         "cosine_similarity_rows_backward", "augment_views"}) {
    cpu_kernels.append(op);
#ifdef WITH_CUDA
    cuda_kernels.append(op);
#endif
  }
  info["cpu_kernels"] = cpu_kernels;
  info["cuda_kernels"] = cuda_kernels;
  return info;
}

}  // namespace

TORCH_LIBRARY(jem_fast, m) {
  // Schemas are added by the per-op fragments.
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "jem_fast compiled kernels (ops are registered in torch.ops.jem_fast)";
  m.def("build_info", &build_info, "What this build of jem_fast was compiled with.");
}
