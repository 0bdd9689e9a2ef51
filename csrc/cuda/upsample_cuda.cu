// CUDA kernels of the Gaussian receptive-field up-sampling, layer aggregation and image maximum
// (reference: fastmsfd/ops/reference.py::upsample, aggregate, image_score; CPU twin: csrc/cpu/upsample_cpu.cpp).
// Column pass per layer into a small (B, h, W) scratch, then one kernel that computes every layer's row product
// for its output pixel and writes the aggregated heatmap once. Dense dot products (maps are at most 64 cells a
// side): a NaN/inf anywhere in an image spreads over its whole heatmap exactly as in the dense reference.
#include <cuda_runtime.h>

#include <cmath>

#include "launchers.h"

namespace fastmsfd {
namespace cuda {
namespace {
constexpr int kThreads = 256;

__global__ void column_pass(const float* __restrict__ d, const float* __restrict__ g_cols, int64_t rows, int64_t w,
                            int64_t W, float* __restrict__ tmp) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= rows * W) return;
  const int64_t r = idx / W, x = idx % W;
  const float* drow = d + r * w;
  const float* g = g_cols + x * w;
  float acc = 0.f;
  for (int64_t j = 0; j < w; ++j) acc += g[j] * drow[j];
  tmp[idx] = acc;
}

__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || b != b) ? NAN : fmaxf(a, b); }

__global__ void row_pass(LayerMaps maps, int mode, int64_t B, int64_t H, int64_t W, float* __restrict__ heat) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= B * H * W) return;
  const int64_t x = idx % W, y = (idx / W) % H, b = idx / (H * W);
  float out = 0.f;
  for (int l = 0; l < maps.count; ++l) {
    const int64_t h = maps.h[l];
    const float* g = maps.g_rows[l] + y * h;
    const float* t = maps.tmp[l] + b * h * W + x;
    float acc = 0.f;
    for (int64_t i = 0; i < h; ++i) acc += g[i] * t[i * W];
    const float v = maps.weight[l] * acc;
    if (l == 0) out = v;
    else if (mode == static_cast<int>(Aggregate::Max)) out = nan_max(out, v);
    else if (mode == static_cast<int>(Aggregate::Product)) out *= v;
    else out += v;
  }
  heat[idx] = mode == static_cast<int>(Aggregate::Mean) ? out / maps.count : out;
}

__global__ void image_max_kernel(const float* __restrict__ heat, int64_t HW, float* __restrict__ score) {
  __shared__ float part[kThreads];
  const float* h = heat + blockIdx.x * HW;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) m = nan_max(m, h[i]);
  part[threadIdx.x] = m;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) part[threadIdx.x] = nan_max(part[threadIdx.x], part[threadIdx.x + o]);
    __syncthreads();
  }
  if (threadIdx.x == 0) score[blockIdx.x] = part[0];
}

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }
}  // namespace

int upsample_aggregate(const LayerMaps& maps, Aggregate mode, int64_t B, int64_t H, int64_t W, float* heat,
                       void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (maps.count < 1 || maps.count > kMaxLayers) return static_cast<int>(cudaErrorInvalidValue);
  if (B * H * W == 0) return 0;
  for (int l = 0; l < maps.count; ++l) {
    const int64_t n = B * maps.h[l] * W;
    column_pass<<<blocks_for(n), kThreads, 0, st>>>(maps.d[l], maps.g_cols[l], B * maps.h[l], maps.w[l], W,
                                                    maps.tmp[l]);
  }
  row_pass<<<blocks_for(B * H * W), kThreads, 0, st>>>(maps, static_cast<int>(mode), B, H, W, heat);
  return static_cast<int>(cudaGetLastError());
}

int image_max(const float* heat, int64_t B, int64_t HW, float* score, void* stream) {
  if (B == 0) return 0;
  image_max_kernel<<<static_cast<unsigned>(B), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(heat, HW, score);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastmsfd
