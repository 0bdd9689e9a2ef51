// CUDA kernels of the per-layer combined distance and its gradient
// (reference: fastmsfd/ops/reference.py::combined_distance; CPU twin: csrc/cpu/distance_cpu.cpp).
// NCHW: one thread per cell, the channel loop strides by HW, so a warp reads 32 adjacent cells: coalesced.
// NHWC: one warp per cell, lanes stride over the contiguous channels and reduce with shuffles.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launchers.h"

namespace fastmsfd {
namespace cuda {
namespace {
constexpr float kEps = 1e-6f;
constexpr int kThreads = 256;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ float finish(float diff2, float tt, float ss, float ts, float inv_c, float alpha,
                                        float beta, float* stats) {
  const float ns_raw = sqrtf(ss);
  const float nt = fmaxf(sqrtf(tt), kEps);
  const float ns = fmaxf(ns_raw, kEps);
  if (stats) {
    stats[0] = nt;
    stats[1] = ns;
    stats[2] = ts;
    stats[3] = ns_raw;
  }
  return alpha * diff2 * inv_c + beta * (1.f - ts / (nt * ns));
}

template <typename T>
__global__ void forward_nchw(const T* __restrict__ t, const T* __restrict__ s, int64_t B, int64_t C, int64_t HW,
                             float alpha, float beta, float* __restrict__ out, float* __restrict__ stats) {
  const int64_t cell = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (cell >= B * HW) return;
  const int64_t b = cell / HW, i = cell % HW;
  const T* tp = t + b * C * HW + i;
  const T* sp = s + b * C * HW + i;
  float diff2 = 0.f, tt = 0.f, ss = 0.f, ts = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    const float a = to_f(tp[c * HW]), v = to_f(sp[c * HW]), d = a - v;
    diff2 += d * d;
    tt += a * a;
    ss += v * v;
    ts += a * v;
  }
  out[cell] = finish(diff2, tt, ss, ts, 1.f / C, alpha, beta, stats ? stats + 4 * cell : nullptr);
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T>
__global__ void forward_nhwc(const T* __restrict__ t, const T* __restrict__ s, int64_t cells, int64_t C,
                             float alpha, float beta, float* __restrict__ out, float* __restrict__ stats) {
  const int64_t cell = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (cell >= cells) return;  // whole warps exit together: cell is uniform within a warp
  float diff2 = 0.f, tt = 0.f, ss = 0.f, ts = 0.f;
  for (int64_t c = lane; c < C; c += 32) {
    const float a = to_f(t[cell * C + c]), v = to_f(s[cell * C + c]), d = a - v;
    diff2 += d * d;
    tt += a * a;
    ss += v * v;
    ts += a * v;
  }
  diff2 = warp_sum(diff2);
  tt = warp_sum(tt);
  ss = warp_sum(ss);
  ts = warp_sum(ts);
  if (lane == 0) out[cell] = finish(diff2, tt, ss, ts, 1.f / C, alpha, beta, stats ? stats + 4 * cell : nullptr);
}

struct Coef {
  float k_diff, k_t, k_s;
};

__device__ __forceinline__ Coef coef(float g, const float* st, float two_alpha_c, float beta) {
  const float nt = st[0], ns = st[1], ts = st[2], ns_raw = st[3];
  const float k_t = g * beta / (nt * ns);
  return {g * two_alpha_c, k_t, ns_raw > kEps ? k_t * ts / (ns * ns) : 0.f};
}

template <typename T>
__global__ void backward_nchw(const float* __restrict__ grad_d, const T* __restrict__ t, const T* __restrict__ s,
                              const float* __restrict__ stats, int64_t B, int64_t C, int64_t HW, float two_alpha_c,
                              float beta, T* __restrict__ grad_s) {
  const int64_t cell = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (cell >= B * HW) return;
  const Coef k = coef(grad_d[cell], stats + 4 * cell, two_alpha_c, beta);
  const int64_t base = (cell / HW) * C * HW + cell % HW;
  for (int64_t c = 0; c < C; ++c) {
    const float a = to_f(t[base + c * HW]), v = to_f(s[base + c * HW]);
    grad_s[base + c * HW] = from_f<T>(k.k_diff * (v - a) - k.k_t * a + k.k_s * v);
  }
}

template <typename T>
__global__ void backward_nhwc(const float* __restrict__ grad_d, const T* __restrict__ t, const T* __restrict__ s,
                              const float* __restrict__ stats, int64_t n, int64_t C, float two_alpha_c, float beta,
                              T* __restrict__ grad_s) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n) return;
  const int64_t cell = idx / C;
  const Coef k = coef(grad_d[cell], stats + 4 * cell, two_alpha_c, beta);
  const float a = to_f(t[idx]), v = to_f(s[idx]);
  grad_s[idx] = from_f<T>(k.k_diff * (v - a) - k.k_t * a + k.k_s * v);
}

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

template <typename T>
int forward_typed(const void* t, const void* s, Layout layout, int64_t B, int64_t C, int64_t HW, float alpha,
                  float beta, float* out, float* stats, cudaStream_t st) {
  const int64_t cells = B * HW;
  if (cells == 0) return 0;
  if (layout == Layout::NHWC) {
    forward_nhwc<T><<<blocks_for(cells * 32, kThreads), kThreads, 0, st>>>(
        static_cast<const T*>(t), static_cast<const T*>(s), cells, C, alpha, beta, out, stats);
  } else {
    forward_nchw<T><<<blocks_for(cells, kThreads), kThreads, 0, st>>>(
        static_cast<const T*>(t), static_cast<const T*>(s), B, C, HW, alpha, beta, out, stats);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int backward_typed(const float* grad_d, const void* t, const void* s, const float* stats, Layout layout, int64_t B,
                   int64_t C, int64_t HW, float alpha, float beta, void* grad_s, cudaStream_t st) {
  if (B * HW == 0) return 0;
  const float two_alpha_c = 2.f * alpha / C;
  if (layout == Layout::NHWC) {
    backward_nhwc<T><<<blocks_for(B * HW * C, kThreads), kThreads, 0, st>>>(
        grad_d, static_cast<const T*>(t), static_cast<const T*>(s), stats, B * HW * C, C, two_alpha_c, beta,
        static_cast<T*>(grad_s));
  } else {
    backward_nchw<T><<<blocks_for(B * HW, kThreads), kThreads, 0, st>>>(
        grad_d, static_cast<const T*>(t), static_cast<const T*>(s), stats, B, C, HW, two_alpha_c, beta,
        static_cast<T*>(grad_s));
  }
  return static_cast<int>(cudaGetLastError());
}
}  // namespace

int distance_forward(const void* t, const void* s, DType dtype, Layout layout, int64_t B, int64_t C, int64_t HW,
                     float alpha, float beta, float* out, float* stats, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::Float32: return forward_typed<float>(t, s, layout, B, C, HW, alpha, beta, out, stats, st);
    case DType::Float16: return forward_typed<__half>(t, s, layout, B, C, HW, alpha, beta, out, stats, st);
    case DType::BFloat16:
      return forward_typed<__nv_bfloat16>(t, s, layout, B, C, HW, alpha, beta, out, stats, st);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int distance_backward(const float* grad_d, const void* t, const void* s, const float* stats, DType dtype,
                      Layout layout, int64_t B, int64_t C, int64_t HW, float alpha, float beta, void* grad_s,
                      void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::Float32:
      return backward_typed<float>(grad_d, t, s, stats, layout, B, C, HW, alpha, beta, grad_s, st);
    case DType::Float16:
      return backward_typed<__half>(grad_d, t, s, stats, layout, B, C, HW, alpha, beta, grad_s, st);
    case DType::BFloat16:
      return backward_typed<__nv_bfloat16>(grad_d, t, s, stats, layout, B, C, HW, alpha, beta, grad_s, st);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace fastmsfd
