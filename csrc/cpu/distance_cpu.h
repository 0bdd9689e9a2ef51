#pragma once
#include <cstdint>

#include "../types.h"

namespace fastmsfd {

namespace cpu {
// Per-cell combined distance (B, C, HW) -> out (B, HW) float32, one pass over the features.
// stats, when not null, receives per cell {max(|t|,eps), max(|s|,eps), <t,s>, |s|} for the backward.
void combined_distance(const void* t, const void* s, DType dtype, Layout layout, int64_t B, int64_t C, int64_t HW,
                       float alpha, float beta, float* out, float* stats);

// Gradient of sum(grad_d * d) with respect to the student features, written in s's dtype and layout.
void combined_distance_backward(const float* grad_d, const void* t, const void* s, const float* stats, DType dtype,
                                Layout layout, int64_t B, int64_t C, int64_t HW, float alpha, float beta,
                                void* grad_s);
}  // namespace cpu
}  // namespace fastmsfd
