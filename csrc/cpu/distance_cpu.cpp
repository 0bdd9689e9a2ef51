// CPU kernels of the per-layer combined distance and its gradient
// (reference: fastmsfd/ops/reference.py::combined_distance).
//   d = alpha * ||t - s||^2 / C + beta * (1 - <t,s> / (max(||t||,eps) * max(||s||,eps)))
// NCHW: the h*w cells of one channel are contiguous, so the channel loop is outermost and the inner loop runs
// unit-stride over a block of cells (vectorised). NHWC (channels_last, what the channels_last backbones emit):
// the channels of one cell are contiguous, so the inner loop is a vectorised reduction over channels.
// Either way each feature element is read once, accumulating in float32.
#include "distance_cpu.h"
#include "simd.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>

namespace fastmsfd {
namespace cpu {

namespace {
constexpr float kEps = 1e-6f;
constexpr int64_t kCellBlock = 512;  // cells per NCHW task: the per-cell accumulators stay in L1

struct Sums {
  float diff2, tt, ss, ts;
};

FASTMSFD_INLINE float finish(const Sums& a, float inv_c, float alpha, float beta, float* stats) {
  const float ns_raw = std::sqrt(a.ss);
  const float nt = std::max(std::sqrt(a.tt), kEps);
  const float ns = std::max(ns_raw, kEps);
  if (stats) {
    stats[0] = nt;
    stats[1] = ns;
    stats[2] = a.ts;
    stats[3] = ns_raw;
  }
  return alpha * a.diff2 * inv_c + beta * (1.f - a.ts / (nt * ns));
}

template <typename T>
FASTMSFD_INLINE void nchw_block(const T* t, const T* s, int64_t C, int64_t HW, int64_t c0, int64_t n, float alpha, float beta,
                float* out, float* stats) {
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
  for (int64_t i = 0; i < n; ++i) {
    out[i] = finish({diff2[i], tt[i], ss[i], ts[i]}, inv_c, alpha, beta, stats ? stats + 4 * i : nullptr);
  }
}

template <typename T>
FASTMSFD_INLINE Sums nhwc_cell(const T* t, const T* s, int64_t C) {
  float diff2 = 0.f, tt = 0.f, ss = 0.f, ts = 0.f;
#pragma omp simd reduction(+ : diff2, tt, ss, ts)
  for (int64_t c = 0; c < C; ++c) {
    const float a = static_cast<float>(t[c]);
    const float b = static_cast<float>(s[c]);
    const float d = a - b;
    diff2 += d * d;
    tt += a * a;
    ss += b * b;
    ts += a * b;
  }
  return {diff2, tt, ss, ts};
}

template <typename T>
FASTMSFD_CPU_CLONES void forward_nhwc_cells(const T* t, const T* s, int64_t C, float alpha, float beta, float* out,
                                            float* stats, int64_t begin, int64_t end) {
  const float inv_c = 1.f / static_cast<float>(C);
  for (int64_t cell = begin; cell < end; ++cell) {
    out[cell] = finish(nhwc_cell(t + cell * C, s + cell * C, C), inv_c, alpha, beta,
                       stats ? stats + 4 * cell : nullptr);
  }
}

template <typename T>
FASTMSFD_CPU_CLONES void forward_nchw_tasks(const T* t, const T* s, int64_t C, int64_t HW, float alpha, float beta,
                                            float* out, float* stats, int64_t begin, int64_t end) {
  const int64_t blocks = (HW + kCellBlock - 1) / kCellBlock;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / blocks;
    const int64_t c0 = (task % blocks) * kCellBlock;
    const int64_t n = std::min(kCellBlock, HW - c0);
    const int64_t cell = b * HW + c0;
    nchw_block(t + b * C * HW, s + b * C * HW, C, HW, c0, n, alpha, beta, out + cell,
               stats ? stats + 4 * cell : nullptr);
  }
}

template <typename T>
void forward_impl(const T* t, const T* s, Layout layout, int64_t B, int64_t C, int64_t HW, float alpha, float beta,
                  float* out, float* stats) {
  if (layout == Layout::NHWC) {
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
    at::parallel_for(0, B * HW, grain, [&](int64_t begin, int64_t end) {
      forward_nhwc_cells(t, s, C, alpha, beta, out, stats, begin, end);
    });
    return;
  }
  const int64_t blocks = (HW + kCellBlock - 1) / kCellBlock;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    forward_nchw_tasks(t, s, C, HW, alpha, beta, out, stats, begin, end);
  });
}

// Per-cell coefficients of the gradient: grad_s = k_diff * (s - t) - k_t * t + k_s * s.
struct Coef {
  float k_diff, k_t, k_s;
};

FASTMSFD_INLINE Coef coef(float g, const float* st, float two_alpha_c, float beta) {
  const float nt = st[0], ns = st[1], ts = st[2], ns_raw = st[3];
  const float k_t = g * beta / (nt * ns);
  // The clamp max(|s|, eps) passes no gradient where it is active, exactly as torch's clamp_min.
  const float k_s = ns_raw > kEps ? k_t * ts / (ns * ns) : 0.f;
  return {g * two_alpha_c, k_t, k_s};
}

template <typename T>
FASTMSFD_CPU_CLONES void backward_nhwc_cells(const float* grad_d, const T* t, const T* s, const float* stats,
                                             int64_t C, float two_alpha_c, float beta, T* grad_s, int64_t begin,
                                             int64_t end) {
  for (int64_t cell = begin; cell < end; ++cell) {
    const Coef k = coef(grad_d[cell], stats + 4 * cell, two_alpha_c, beta);
    const T* tc = t + cell * C;
    const T* sc = s + cell * C;
    T* gc = grad_s + cell * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float a = static_cast<float>(tc[c]);
      const float b = static_cast<float>(sc[c]);
      gc[c] = static_cast<T>(k.k_diff * (b - a) - k.k_t * a + k.k_s * b);
    }
  }
}

template <typename T>
FASTMSFD_CPU_CLONES void backward_nchw_tasks(const float* grad_d, const T* t, const T* s, const float* stats,
                                             int64_t C, int64_t HW, float two_alpha_c, float beta, T* grad_s,
                                             int64_t begin, int64_t end) {
  const int64_t blocks = (HW + kCellBlock - 1) / kCellBlock;
  float kd[kCellBlock], kt[kCellBlock], ks[kCellBlock];
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / blocks;
    const int64_t c0 = (task % blocks) * kCellBlock;
    const int64_t n = std::min(kCellBlock, HW - c0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t cell = b * HW + c0 + i;
      const Coef k = coef(grad_d[cell], stats + 4 * cell, two_alpha_c, beta);
      kd[i] = k.k_diff;
      kt[i] = k.k_t;
      ks[i] = k.k_s;
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t off = (b * C + c) * HW + c0;
      const T* tc = t + off;
      const T* sc = s + off;
      T* gc = grad_s + off;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float a = static_cast<float>(tc[i]);
        const float bb = static_cast<float>(sc[i]);
        gc[i] = static_cast<T>(kd[i] * (bb - a) - kt[i] * a + ks[i] * bb);
      }
    }
  }
}

template <typename T>
void backward_impl(const float* grad_d, const T* t, const T* s, const float* stats, Layout layout, int64_t B,
                   int64_t C, int64_t HW, float alpha, float beta, T* grad_s) {
  const float two_alpha_c = 2.f * alpha / static_cast<float>(C);
  if (layout == Layout::NHWC) {
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
    at::parallel_for(0, B * HW, grain, [&](int64_t begin, int64_t end) {
      backward_nhwc_cells(grad_d, t, s, stats, C, two_alpha_c, beta, grad_s, begin, end);
    });
    return;
  }
  const int64_t blocks = (HW + kCellBlock - 1) / kCellBlock;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    backward_nchw_tasks(grad_d, t, s, stats, C, HW, two_alpha_c, beta, grad_s, begin, end);
  });
}

template <typename F>
void dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(float{});
    case DType::Float16: return f(c10::Half{});
    case DType::BFloat16: return f(c10::BFloat16{});
  }
}
}  // namespace

void combined_distance(const void* t, const void* s, DType dtype, Layout layout, int64_t B, int64_t C, int64_t HW,
                       float alpha, float beta, float* out, float* stats) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    forward_impl(static_cast<const T*>(t), static_cast<const T*>(s), layout, B, C, HW, alpha, beta, out, stats);
  });
}

void combined_distance_backward(const float* grad_d, const void* t, const void* s, const float* stats, DType dtype,
                                Layout layout, int64_t B, int64_t C, int64_t HW, float alpha, float beta,
                                void* grad_s) {
  dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    backward_impl(grad_d, static_cast<const T*>(t), static_cast<const T*>(s), stats, layout, B, C, HW, alpha, beta,
                  static_cast<T*>(grad_s));
  });
}

}  // namespace cpu
}  // namespace fastmsfd
