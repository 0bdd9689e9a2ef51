// CPU kernel of the per-layer combined distance (reference: fastmsfd/anomaly_map.py::combined_distance).
//   d = alpha * ||t - s||^2 / C + beta * (1 - <t,s> / (max(||t||,eps) * max(||s||,eps)))
// Features are NCHW: for one channel the h*w cells are contiguous, so the channel loop is outermost and the
// inner loop over cells is a unit-stride loop the compiler vectorises. Each element is read once.
#include "distance_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace fastmsfd {
namespace cpu {

namespace {
constexpr float kEps = 1e-6f;
constexpr int64_t kCellBlock = 1024;  // cells per task: 4 accumulators of 4 KiB stay in L1

template <typename T>
void distance_block(const T* t, const T* s, int64_t C, int64_t HW, int64_t c0, int64_t n, float alpha,
                    float beta, float* out) {
  float diff2[kCellBlock], tt[kCellBlock], ss[kCellBlock], ts[kCellBlock];
  std::fill(diff2, diff2 + n, 0.f);
  std::fill(tt, tt + n, 0.f);
  std::fill(ss, ss + n, 0.f);
  std::fill(ts, ts + n, 0.f);
  for (int64_t c = 0; c < C; ++c) {
    const T* tc = t + c * HW + c0;
    const T* sc = s + c * HW + c0;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float a = static_cast<float>(tc[i]);
      const float b = static_cast<float>(sc[i]);
      const float d = a - b;
      diff2[i] += d * d;
      tt[i] += a * a;
      ss[i] += b * b;
      ts[i] += a * b;
    }
  }
  const float inv_c = 1.f / static_cast<float>(C);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float nt = std::max(std::sqrt(tt[i]), kEps);
    const float ns = std::max(std::sqrt(ss[i]), kEps);
    out[i] = alpha * diff2[i] * inv_c + beta * (1.f - ts[i] / (nt * ns));
  }
}

template <typename T>
void distance_impl(const T* t, const T* s, int64_t B, int64_t C, int64_t HW, float alpha, float beta,
                   float* out) {
  const int64_t blocks = (HW + kCellBlock - 1) / kCellBlock;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t c0 = (task % blocks) * kCellBlock;
      const int64_t n = std::min(kCellBlock, HW - c0);
      distance_block(t + b * C * HW, s + b * C * HW, C, HW, c0, n, alpha, beta, out + b * HW + c0);
    }
  });
}
}  // namespace

void combined_distance(const void* t, const void* s, DType dtype, int64_t B, int64_t C, int64_t HW, float alpha,
                       float beta, float* out) {
  switch (dtype) {
    case DType::Float32:
      return distance_impl(static_cast<const float*>(t), static_cast<const float*>(s), B, C, HW, alpha, beta, out);
    case DType::Float16:
      return distance_impl(static_cast<const c10::Half*>(t), static_cast<const c10::Half*>(s), B, C, HW, alpha,
                           beta, out);
    case DType::BFloat16:
      return distance_impl(static_cast<const c10::BFloat16*>(t), static_cast<const c10::BFloat16*>(s), B, C, HW,
                           alpha, beta, out);
  }
}

}  // namespace cpu
}  // namespace fastmsfd
