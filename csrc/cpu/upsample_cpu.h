#pragma once
#include <cstdint>
#include <vector>

#include "../types.h"

namespace fastmsfd {

namespace cpu {
// One layer's distance map d (B, h, w) float32 with its row and column up-sampling matrices (H x h, W x w).
struct LayerMap {
  const float* d;
  int64_t h, w;
  const float* g_rows;
  const float* g_cols;
  float weight;
};

// heat (B, H, W) = aggregate_l(weight_l * G_rows,l @ d_l @ G_cols,l^T). The Gaussian matrices are truncated, so
// each output row/column only touches a band of cells: the band is found once and only it is visited.
// An image whose distance maps hold a NaN or inf gets an all-NaN heatmap (what the dense reference computes).
void upsample_aggregate(const std::vector<LayerMap>& layers, Aggregate mode, int64_t B, int64_t H, int64_t W,
                        float* heat);

// score[b] = max of heat[b], or the mean of its k largest values when k > 0; NaN when heat[b] holds a NaN.
void image_score(const float* heat, int64_t B, int64_t HW, int64_t k, float* score);
}  // namespace cpu
}  // namespace fastmsfd
