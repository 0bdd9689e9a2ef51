#pragma once
// Raw-pointer launchers of the CUDA kernels: no torch headers, so `nvcc -c` compiles them anywhere
// (scripts/compile_cuda.sh), and the registration file (csrc/ops.cpp) calls them where a CUDA torch exists.
// Each returns 0 or a cudaError_t code. `stream` is a cudaStream_t.
#include <cstdint>

#include "../types.h"

namespace fastmsfd {
namespace cuda {
// kMaxLayers (types.h), the op's layer cap, sizes the arrays below.

// Per-cell combined distance (B, C, HW) -> out (B, HW) float32; stats (nullable) as in the CPU kernel.
int distance_forward(const void* t, const void* s, DType dtype, Layout layout, int64_t B, int64_t C, int64_t HW,
                     float alpha, float beta, float* out, float* stats, void* stream);

// grad_s = d/ds sum(grad_d * d), in s's dtype and layout.
int distance_backward(const float* grad_d, const void* t, const void* s, const float* stats, DType dtype,
                      Layout layout, int64_t B, int64_t C, int64_t HW, float alpha, float beta, void* grad_s,
                      void* stream);

struct LayerMaps {
  int count;
  const float* d[kMaxLayers];       // (B, h, w)
  const float* g_rows[kMaxLayers];  // (H, h)
  const float* g_cols[kMaxLayers];  // (W, w)
  float* tmp[kMaxLayers];           // (B, h, W) scratch for the column pass
  int64_t h[kMaxLayers], w[kMaxLayers];
  float weight[kMaxLayers];
};

// heat (B, H, W) = aggregate_l(weight_l * G_rows @ d_l @ G_cols^T). Dense products: a NaN or inf anywhere in
// an image's maps makes its whole heatmap NaN, as in the reference.
int upsample_aggregate(const LayerMaps& maps, Aggregate mode, int64_t B, int64_t H, int64_t W, float* heat,
                       void* stream);

// score[b] = max of heat[b] (NaN if it holds a NaN).
int image_max(const float* heat, int64_t B, int64_t HW, float* score, void* stream);
}  // namespace cuda
}  // namespace fastmsfd
