// The one registration file: op schemas (TORCH_LIBRARY), CPU implementations, and the pybind11 module
// fastmsfd._C. Fake (meta) implementations live in fastmsfd/cpp_backend.py (torch.library.register_fake).
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "cpu/distance_cpu.h"

namespace fastmsfd {
namespace {

DType to_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "fastmsfd: features must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_pair(const at::Tensor& t, const at::Tensor& s) {
  TORCH_CHECK(t.dim() == 4, "fastmsfd: features must be (B, C, h, w), got ", t.sizes());
  TORCH_CHECK(t.sizes() == s.sizes(), "fastmsfd: teacher ", t.sizes(), " and student ", s.sizes(), " differ");
  TORCH_CHECK(t.scalar_type() == s.scalar_type(), "fastmsfd: teacher and student dtypes differ");
}

at::Tensor distance_map_cpu(const at::Tensor& t_in, const at::Tensor& s_in, double alpha, double beta) {
  check_pair(t_in, s_in);
  const auto t = t_in.contiguous();
  const auto s = s_in.contiguous();
  const int64_t B = t.size(0), C = t.size(1), h = t.size(2), w = t.size(3);
  auto out = at::empty({B, h, w}, t.options().dtype(at::kFloat));
  cpu::combined_distance(t.data_ptr(), s.data_ptr(), to_dtype(t), B, C, h * w, static_cast<float>(alpha),
                         static_cast<float>(beta), out.data_ptr<float>());
  return out;
}

}  // namespace
}  // namespace fastmsfd

TORCH_LIBRARY(fastmsfd, m) {
  m.def("distance_map(Tensor t, Tensor s, float alpha, float beta) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastmsfd, CPU, m) {
  m.impl("distance_map", &fastmsfd::distance_map_cpu);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastmsfd compiled kernels; the ops are registered under torch.ops.fastmsfd";
#ifdef FASTMSFD_WITH_CUDA
  m.def("has_cuda", [] { return true; });
#else
  m.def("has_cuda", [] { return false; });
#endif
}
