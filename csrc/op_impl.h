#pragma once
// The op implementations every device shares (argument checks, layouts, the composition of the fused op),
// written once over a device's kernels K: csrc/cpu/ops_cpu.cpp instantiates them with the CPU kernels,
// csrc/cuda/ops_cuda.cpp with the CUDA launchers. K provides:
//   static void distance(const Pair&, double alpha, double beta, at::Tensor& out, float* stats);
//   static void distance_backward(const at::Tensor& grad_d, const Pair&, const at::Tensor& stats, double alpha,
//                                 double beta, at::Tensor& grad_s);
//   static at::Tensor upsample_aggregate(const std::vector<at::Tensor>& d, const std::vector<at::Tensor>& g_rows,
//                                        const std::vector<at::Tensor>& g_cols, const std::vector<float>& w,
//                                        Aggregate mode);
//   static at::Tensor image_score(const at::Tensor& heat, int64_t k);
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "types.h"

namespace fastmsfd {

inline DType to_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "fastmsfd: features must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

inline void check_pair(const at::Tensor& t, const at::Tensor& s) {
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

inline Pair in_layout(const at::Tensor& t, const at::Tensor& s) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  if (!t.is_contiguous() && t.is_contiguous(cl)) return {t, s.contiguous(cl), Layout::NHWC};
  return {t.contiguous(), s.contiguous(), Layout::NCHW};
}

template <class K>
at::Tensor distance_map(const at::Tensor& t, const at::Tensor& s, double alpha, double beta) {
  check_pair(t, s);
  auto out = at::empty({t.size(0), t.size(2), t.size(3)}, t.options().dtype(at::kFloat));
  K::distance(in_layout(t, s), alpha, beta, out, nullptr);
  return out;
}

template <class K>
std::tuple<at::Tensor, at::Tensor> distance_forward(const at::Tensor& t, const at::Tensor& s, double alpha,
                                                    double beta) {
  check_pair(t, s);
  auto out = at::empty({t.size(0), t.size(2), t.size(3)}, t.options().dtype(at::kFloat));
  auto stats = at::empty({t.size(0), t.size(2), t.size(3), 4}, t.options().dtype(at::kFloat));
  K::distance(in_layout(t, s), alpha, beta, out, stats.data_ptr<float>());
  return {out, stats};
}

template <class K>
at::Tensor distance_backward(const at::Tensor& grad_d, const at::Tensor& t, const at::Tensor& s,
                             const at::Tensor& stats, double alpha, double beta) {
  check_pair(t, s);
  const Pair p = in_layout(t, s);
  const int64_t B = t.size(0), h = t.size(2), w = t.size(3);
  TORCH_CHECK(grad_d.sizes() == at::IntArrayRef({B, h, w}), "fastmsfd: grad_d must be (B, h, w)");
  TORCH_CHECK(stats.sizes() == at::IntArrayRef({B, h, w, 4}), "fastmsfd: stats must be (B, h, w, 4)");
  auto grad_s = at::empty_like(
      p.s, p.layout == Layout::NHWC ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  K::distance_backward(grad_d.to(at::kFloat).contiguous(), p, stats.to(at::kFloat).contiguous(), alpha, beta,
                       grad_s);
  return grad_s;
}

template <class K>
std::tuple<at::Tensor, at::Tensor> anomaly_map(at::TensorList teacher, at::TensorList student,
                                               at::TensorList g_rows, at::TensorList g_cols,
                                               at::ArrayRef<double> weights, double alpha, double beta, int64_t mode,
                                               const c10::optional<at::Tensor>& blur_rows,
                                               const c10::optional<at::Tensor>& blur_cols, int64_t topk_count) {
  const size_t L = teacher.size();
  TORCH_CHECK(L >= 1 && student.size() == L && g_rows.size() == L && g_cols.size() == L && weights.size() == L,
              "fastmsfd: anomaly_map needs one teacher, student, G_rows, G_cols and weight per layer");
  TORCH_CHECK(L <= kMaxLayers, "fastmsfd: at most ", kMaxLayers, " layers, got ", L);
  TORCH_CHECK(mode >= 0 && mode <= 3, "fastmsfd: aggregation mode must be 0..3");
  TORCH_CHECK(blur_rows.has_value() == blur_cols.has_value(), "fastmsfd: give both blur matrices or neither");
  const int64_t B = teacher[0].size(0), H = g_rows[0].size(0), W = g_cols[0].size(0);
  std::vector<at::Tensor> d, gr, gc;
  std::vector<float> w;
  for (size_t l = 0; l < L; ++l) {
    d.push_back(distance_map<K>(teacher[l], student[l], alpha, beta));
    gr.push_back(g_rows[l].to(d.back().options()).contiguous());
    gc.push_back(g_cols[l].to(d.back().options()).contiguous());
    w.push_back(static_cast<float>(weights[l]));
    TORCH_CHECK(d.back().size(0) == B, "fastmsfd: layer ", l, " has another batch size");
    TORCH_CHECK(gr.back().sizes() == at::IntArrayRef({H, d.back().size(1)}) &&
                    gc.back().sizes() == at::IntArrayRef({W, d.back().size(2)}),
                "fastmsfd: layer ", l, " up-sampling matrices do not match its ", d.back().sizes(), " map");
  }
  auto heat = K::upsample_aggregate(d, gr, gc, w, static_cast<Aggregate>(mode));
  if (blur_rows.has_value()) {  // max/product: the final blur cannot be folded into G, so it is one more pass
    heat = K::upsample_aggregate({heat}, {blur_rows->to(heat.options()).contiguous()},
                                 {blur_cols->to(heat.options()).contiguous()}, {1.f}, Aggregate::Sum);
  }
  return {heat, K::image_score(heat, topk_count)};
}

// The four ops of csrc/ops.cpp's schema, implemented with the kernels K, for TORCH_LIBRARY_IMPL(fastmsfd, KEY).
template <class K>
void register_impls(torch::Library& m) {
  m.impl("distance_map", &distance_map<K>);
  m.impl("distance_forward", &distance_forward<K>);
  m.impl("distance_backward", &distance_backward<K>);
  m.impl("anomaly_map", &anomaly_map<K>);
}

}  // namespace fastmsfd
