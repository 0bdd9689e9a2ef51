// The op schemas (TORCH_LIBRARY) and the pybind11 module fastmsfd._C. Implementations: csrc/cpu/ops_cpu.cpp
// (TORCH_LIBRARY_IMPL CPU) and csrc/cuda/ops_cuda.cpp (TORCH_LIBRARY_IMPL CUDA, where built), both from
// csrc/op_impl.h; fake (meta) implementations and autograd: fastmsfd/ops/compiled.py.
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(fastmsfd, m) {
  m.def("distance_map(Tensor t, Tensor s, float alpha, float beta) -> Tensor");
  m.def("distance_forward(Tensor t, Tensor s, float alpha, float beta) -> (Tensor, Tensor)");
  m.def("distance_backward(Tensor grad_d, Tensor t, Tensor s, Tensor stats, float alpha, float beta) -> Tensor");
  m.def("anomaly_map(Tensor[] teacher, Tensor[] student, Tensor[] g_rows, Tensor[] g_cols, float[] weights, "
        "float alpha, float beta, int mode, Tensor? blur_rows, Tensor? blur_cols, int topk_count) "
        "-> (Tensor, Tensor)");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastmsfd compiled kernels; the ops are registered under torch.ops.fastmsfd";
#ifdef FASTMSFD_WITH_CUDA
  m.def("has_cuda", [] { return true; });
#else
  m.def("has_cuda", [] { return false; });
#endif
}
