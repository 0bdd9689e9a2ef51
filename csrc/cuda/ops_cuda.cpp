// TORCH_LIBRARY_IMPL(fastmsfd, CUDA): the ops of csrc/ops.cpp on the CUDA launchers (launchers.h), each under a
// device guard and on the current stream of the tensors' GPU. Compiled only where a CUDA build of torch exists
// (setup.py); scripts/compile_cuda.sh checks its syntax elsewhere.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "../op_impl.h"
#include "launchers.h"

namespace fastmsfd {
namespace {

void cuda_check(int err, const char* what) {
  TORCH_CHECK(err == 0, "fastmsfd: CUDA ", what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void* stream_of(const at::Tensor& x) { return c10::cuda::getCurrentCUDAStream(x.device().index()).stream(); }

struct CudaKernels {
  static void distance(const Pair& p, double alpha, double beta, at::Tensor& out, float* stats) {
    const c10::cuda::CUDAGuard guard(p.t.device());
    cuda_check(cuda::distance_forward(p.t.data_ptr(), p.s.data_ptr(), to_dtype(p.t), p.layout, p.t.size(0),
                                      p.t.size(1), p.t.size(2) * p.t.size(3), float(alpha), float(beta),
                                      out.data_ptr<float>(), stats, stream_of(p.t)),
               "distance");
  }

  static void distance_backward(const at::Tensor& grad_d, const Pair& p, const at::Tensor& stats, double alpha,
                                double beta, at::Tensor& grad_s) {
    const c10::cuda::CUDAGuard guard(p.t.device());
    cuda_check(cuda::distance_backward(grad_d.data_ptr<float>(), p.t.data_ptr(), p.s.data_ptr(),
                                       stats.data_ptr<float>(), to_dtype(p.t), p.layout, p.t.size(0), p.t.size(1),
                                       p.t.size(2) * p.t.size(3), float(alpha), float(beta), grad_s.data_ptr(),
                                       stream_of(p.t)),
               "distance backward");
  }

  static at::Tensor upsample_aggregate(const std::vector<at::Tensor>& d, const std::vector<at::Tensor>& g_rows,
                                       const std::vector<at::Tensor>& g_cols, const std::vector<float>& weights,
                                       Aggregate mode) {
    const int64_t B = d[0].size(0), H = g_rows[0].size(0), W = g_cols[0].size(0);
    const c10::cuda::CUDAGuard guard(d[0].device());
    auto heat = at::empty({B, H, W}, d[0].options());
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
  }

  static at::Tensor image_score(const at::Tensor& heat, int64_t k) {
    const int64_t B = heat.size(0), HW = heat.size(1) * heat.size(2);
    if (k > 0) return std::get<0>(heat.reshape({B, HW}).topk(std::min(k, HW), 1)).mean(1);  // NaN sorts first
    const c10::cuda::CUDAGuard guard(heat.device());
    auto score = at::empty({B}, heat.options());
    cuda_check(cuda::image_max(heat.data_ptr<float>(), B, HW, score.data_ptr<float>(), stream_of(heat)), "max");
    return score;
  }
};

}  // namespace
}  // namespace fastmsfd

TORCH_LIBRARY_IMPL(fastmsfd, CUDA, m) { fastmsfd::register_impls<fastmsfd::CudaKernels>(m); }
