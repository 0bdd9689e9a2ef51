// The one registration file: op schemas (TORCH_LIBRARY), CPU (and, when built, CUDA) implementations, and the
// pybind11 module fastmsfd._C. Fake (meta) implementations and autograd live in fastmsfd/ops/compiled.py.
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "cpu/distance_cpu.h"
#include "types.h"
#include "cpu/upsample_cpu.h"
#ifdef FASTMSFD_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include "cuda/launchers.h"
#endif

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
  TORCH_CHECK(t.device() == s.device(), "fastmsfd: teacher and student devices differ");
}

// Both tensors in one kernel-readable layout: NCHW or channels_last contiguous, copying at most once.
struct Pair {
  at::Tensor t, s;
  Layout layout;
};

Pair in_layout(const at::Tensor& t, const at::Tensor& s) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  if (!t.is_contiguous() && t.is_contiguous(cl)) return {t, s.contiguous(cl), Layout::NHWC};
  return {t.contiguous(), s.contiguous(), Layout::NCHW};
}

#ifdef FASTMSFD_WITH_CUDA
void cuda_check(int err, const char* what) {
  TORCH_CHECK(err == 0, "fastmsfd: CUDA ", what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}
void* stream_of(const at::Tensor& x) { return c10::cuda::getCurrentCUDAStream(x.device().index()).stream(); }
#endif

// The per-layer distance kernel of the tensors' device; stats may be null.
void run_distance(const Pair& p, double alpha, double beta, at::Tensor& out, float* stats) {
  const int64_t B = p.t.size(0), C = p.t.size(1), HW = p.t.size(2) * p.t.size(3);
  if (p.t.is_cuda()) {
#ifdef FASTMSFD_WITH_CUDA
    const c10::cuda::CUDAGuard guard(p.t.device());
    return cuda_check(cuda::distance_forward(p.t.data_ptr(), p.s.data_ptr(), to_dtype(p.t), p.layout, B, C, HW,
                                             float(alpha), float(beta), out.data_ptr<float>(), stats,
                                             stream_of(p.t)), "distance");
#endif
  }
  cpu::combined_distance(p.t.data_ptr(), p.s.data_ptr(), to_dtype(p.t), p.layout, B, C, HW, float(alpha),
                         float(beta), out.data_ptr<float>(), stats);
}

at::Tensor distance_map(const at::Tensor& t, const at::Tensor& s, double alpha, double beta) {
  check_pair(t, s);
  auto out = at::empty({t.size(0), t.size(2), t.size(3)}, t.options().dtype(at::kFloat));
  run_distance(in_layout(t, s), alpha, beta, out, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> distance_forward(const at::Tensor& t, const at::Tensor& s, double alpha,
                                                    double beta) {
  check_pair(t, s);
  auto out = at::empty({t.size(0), t.size(2), t.size(3)}, t.options().dtype(at::kFloat));
  auto stats = at::empty({t.size(0), t.size(2), t.size(3), 4}, t.options().dtype(at::kFloat));
  run_distance(in_layout(t, s), alpha, beta, out, stats.data_ptr<float>());
  return {out, stats};
}

at::Tensor distance_backward(const at::Tensor& grad_d, const at::Tensor& t, const at::Tensor& s,
                             const at::Tensor& stats, double alpha, double beta) {
  check_pair(t, s);
  const Pair p = in_layout(t, s);
  const int64_t B = t.size(0), C = t.size(1), h = t.size(2), w = t.size(3);
  TORCH_CHECK(grad_d.sizes() == at::IntArrayRef({B, h, w}), "fastmsfd: grad_d must be (B, h, w)");
  TORCH_CHECK(stats.sizes() == at::IntArrayRef({B, h, w, 4}), "fastmsfd: stats must be (B, h, w, 4)");
  const auto g = grad_d.to(at::kFloat).contiguous();
  const auto st = stats.to(at::kFloat).contiguous();
  auto grad_s = at::empty_like(
      p.s, p.layout == Layout::NHWC ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (t.is_cuda()) {
#ifdef FASTMSFD_WITH_CUDA
    const c10::cuda::CUDAGuard guard(t.device());
    cuda_check(cuda::distance_backward(g.data_ptr<float>(), p.t.data_ptr(), p.s.data_ptr(), st.data_ptr<float>(),
                                       to_dtype(p.t), p.layout, B, C, h * w, float(alpha), float(beta),
                                       grad_s.data_ptr(), stream_of(t)), "distance backward");
    return grad_s;
#endif
  }
  cpu::combined_distance_backward(g.data_ptr<float>(), p.t.data_ptr(), p.s.data_ptr(), st.data_ptr<float>(),
                                  to_dtype(p.t), p.layout, B, C, h * w, float(alpha), float(beta),
                                  grad_s.data_ptr());
  return grad_s;
}

// Up-sample and aggregate per-layer maps d_l (B, h_l, w_l) float32 into heat (B, H, W) on their device.
at::Tensor upsample_aggregate(const std::vector<at::Tensor>& d, const std::vector<at::Tensor>& g_rows,
                              const std::vector<at::Tensor>& g_cols, const std::vector<float>& weights,
                              Aggregate mode) {
  const int64_t B = d[0].size(0), H = g_rows[0].size(0), W = g_cols[0].size(0);
  auto heat = at::empty({B, H, W}, d[0].options());
  if (d[0].is_cuda()) {
#ifdef FASTMSFD_WITH_CUDA
    const c10::cuda::CUDAGuard guard(d[0].device());
    TORCH_CHECK(d.size() <= cuda::kMaxLayers, "fastmsfd: at most ", cuda::kMaxLayers, " layers on CUDA");
    cuda::LayerMaps maps{};
    std::vector<at::Tensor> scratch;
    maps.count = static_cast<int>(d.size());
    for (size_t l = 0; l < d.size(); ++l) {
      scratch.push_back(at::empty({B, d[l].size(1), W}, d[l].options()));
      maps.d[l] = d[l].data_ptr<float>();
      maps.g_rows[l] = g_rows[l].data_ptr<float>();
      maps.g_cols[l] = g_cols[l].data_ptr<float>();
      maps.tmp[l] = scratch.back().data_ptr<float>();
      maps.h[l] = d[l].size(1);
      maps.w[l] = d[l].size(2);
      maps.weight[l] = weights[l];
    }
    cuda_check(cuda::upsample_aggregate(maps, mode, B, H, W, heat.data_ptr<float>(), stream_of(heat)),
               "up-sampling");
    return heat;
#endif
  }
  std::vector<cpu::LayerMap> layers;
  for (size_t l = 0; l < d.size(); ++l) {
    layers.push_back({d[l].data_ptr<float>(), d[l].size(1), d[l].size(2), g_rows[l].data_ptr<float>(),
                      g_cols[l].data_ptr<float>(), weights[l]});
  }
  cpu::upsample_aggregate(layers, mode, B, H, W, heat.data_ptr<float>());
  return heat;
}

at::Tensor image_score(const at::Tensor& heat, int64_t k) {
  const int64_t B = heat.size(0), HW = heat.size(1) * heat.size(2);
  if (heat.is_cuda()) {
#ifdef FASTMSFD_WITH_CUDA
    if (k > 0) return std::get<0>(heat.reshape({B, HW}).topk(std::min(k, HW), 1)).mean(1);  // NaN sorts first
    const c10::cuda::CUDAGuard guard(heat.device());
    auto score = at::empty({B}, heat.options());
    cuda_check(cuda::image_max(heat.data_ptr<float>(), B, HW, score.data_ptr<float>(), stream_of(heat)), "max");
    return score;
#endif
  }
  auto score = at::empty({B}, heat.options());
  cpu::image_score(heat.data_ptr<float>(), B, HW, k, score.data_ptr<float>());
  return score;
}

std::tuple<at::Tensor, at::Tensor> anomaly_map(at::TensorList teacher, at::TensorList student,
                                               at::TensorList g_rows, at::TensorList g_cols,
                                               at::ArrayRef<double> weights, double alpha, double beta, int64_t mode,
                                               const c10::optional<at::Tensor>& blur_rows,
                                               const c10::optional<at::Tensor>& blur_cols, int64_t topk_count) {
  const size_t L = teacher.size();
  TORCH_CHECK(L >= 1 && student.size() == L && g_rows.size() == L && g_cols.size() == L && weights.size() == L,
              "fastmsfd: anomaly_map needs one teacher, student, G_rows, G_cols and weight per layer");
  TORCH_CHECK(mode >= 0 && mode <= 3, "fastmsfd: aggregation mode must be 0..3");
  TORCH_CHECK(blur_rows.has_value() == blur_cols.has_value(), "fastmsfd: give both blur matrices or neither");
  const int64_t B = teacher[0].size(0), H = g_rows[0].size(0), W = g_cols[0].size(0);
  std::vector<at::Tensor> d, gr, gc;
  std::vector<float> w;
  for (size_t l = 0; l < L; ++l) {
    d.push_back(distance_map(teacher[l], student[l], alpha, beta));
    gr.push_back(g_rows[l].to(d.back().options()).contiguous());
    gc.push_back(g_cols[l].to(d.back().options()).contiguous());
    w.push_back(static_cast<float>(weights[l]));
    TORCH_CHECK(d.back().size(0) == B, "fastmsfd: layer ", l, " has another batch size");
    TORCH_CHECK(gr.back().sizes() == at::IntArrayRef({H, d.back().size(1)}) &&
                    gc.back().sizes() == at::IntArrayRef({W, d.back().size(2)}),
                "fastmsfd: layer ", l, " up-sampling matrices do not match its ", d.back().sizes(), " map");
  }
  auto heat = upsample_aggregate(d, gr, gc, w, static_cast<Aggregate>(mode));
  if (blur_rows.has_value()) {  // max/product: the final blur cannot be folded into G, so it is one more pass
    heat = upsample_aggregate({heat}, {blur_rows->to(heat.options()).contiguous()},
                              {blur_cols->to(heat.options()).contiguous()}, {1.f}, Aggregate::Sum);
  }
  return {heat, image_score(heat, topk_count)};
}

}  // namespace
}  // namespace fastmsfd

TORCH_LIBRARY(fastmsfd, m) {
  m.def("distance_map(Tensor t, Tensor s, float alpha, float beta) -> Tensor");
  m.def("distance_forward(Tensor t, Tensor s, float alpha, float beta) -> (Tensor, Tensor)");
  m.def("distance_backward(Tensor grad_d, Tensor t, Tensor s, Tensor stats, float alpha, float beta) -> Tensor");
  m.def("anomaly_map(Tensor[] teacher, Tensor[] student, Tensor[] g_rows, Tensor[] g_cols, float[] weights, "
        "float alpha, float beta, int mode, Tensor? blur_rows, Tensor? blur_cols, int topk_count) "
        "-> (Tensor, Tensor)");
}

// One implementation per op; each routes to the CPU kernels or the CUDA launchers by the tensors' device.
#define FASTMSFD_IMPL(m)                                        \
  m.impl("distance_map", &fastmsfd::distance_map);              \
  m.impl("distance_forward", &fastmsfd::distance_forward);      \
  m.impl("distance_backward", &fastmsfd::distance_backward);    \
  m.impl("anomaly_map", &fastmsfd::anomaly_map)

TORCH_LIBRARY_IMPL(fastmsfd, CPU, m) { FASTMSFD_IMPL(m); }
#ifdef FASTMSFD_WITH_CUDA
TORCH_LIBRARY_IMPL(fastmsfd, CUDA, m) { FASTMSFD_IMPL(m); }
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastmsfd compiled kernels; the ops are registered under torch.ops.fastmsfd";
#ifdef FASTMSFD_WITH_CUDA
  m.def("has_cuda", [] { return true; });
#else
  m.def("has_cuda", [] { return false; });
#endif
}
