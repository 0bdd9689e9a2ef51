// TORCH_LIBRARY_IMPL(fastmsfd, CPU): the ops of csrc/ops.cpp on the CPU kernels (distance_cpu, upsample_cpu).
#include "../op_impl.h"
#include "distance_cpu.h"
#include "upsample_cpu.h"

namespace fastmsfd {
namespace {

struct CpuKernels {
  static void distance(const Pair& p, double alpha, double beta, at::Tensor& out, float* stats) {
    cpu::combined_distance(p.t.data_ptr(), p.s.data_ptr(), to_dtype(p.t), p.layout, p.t.size(0), p.t.size(1),
                           p.t.size(2) * p.t.size(3), float(alpha), float(beta), out.data_ptr<float>(), stats);
  }

  static void distance_backward(const at::Tensor& grad_d, const Pair& p, const at::Tensor& stats, double alpha,
                                double beta, at::Tensor& grad_s) {
    cpu::combined_distance_backward(grad_d.data_ptr<float>(), p.t.data_ptr(), p.s.data_ptr(),
                                    stats.data_ptr<float>(), to_dtype(p.t), p.layout, p.t.size(0), p.t.size(1),
                                    p.t.size(2) * p.t.size(3), float(alpha), float(beta), grad_s.data_ptr());
  }

  static at::Tensor upsample_aggregate(const std::vector<at::Tensor>& d, const std::vector<at::Tensor>& g_rows,
                                       const std::vector<at::Tensor>& g_cols, const std::vector<float>& weights,
                                       Aggregate mode) {
    const int64_t B = d[0].size(0), H = g_rows[0].size(0), W = g_cols[0].size(0);
    auto heat = at::empty({B, H, W}, d[0].options());
    std::vector<cpu::LayerMap> layers;
    for (size_t l = 0; l < d.size(); ++l) {
      layers.push_back({d[l].data_ptr<float>(), d[l].size(1), d[l].size(2), g_rows[l].data_ptr<float>(),
                        g_cols[l].data_ptr<float>(), weights[l]});
    }
    cpu::upsample_aggregate(layers, mode, B, H, W, heat.data_ptr<float>());
    return heat;
  }

  static at::Tensor image_score(const at::Tensor& heat, int64_t k) {
    const int64_t B = heat.size(0);
    auto score = at::empty({B}, heat.options());
    cpu::image_score(heat.data_ptr<float>(), B, heat.size(1) * heat.size(2), k, score.data_ptr<float>());
    return score;
  }
};

}  // namespace
}  // namespace fastmsfd

TORCH_LIBRARY_IMPL(fastmsfd, CPU, m) { fastmsfd::register_impls<fastmsfd::CpuKernels>(m); }
