#pragma once
#include <cstdint>

namespace fastmsfd {
enum class DType { Float32, Float16, BFloat16 };

namespace cpu {
// Per-cell combined distance of contiguous NCHW features (B, C, HW) -> out (B, HW) float32.
void combined_distance(const void* t, const void* s, DType dtype, int64_t B, int64_t C, int64_t HW, float alpha,
                       float beta, float* out);
}  // namespace cpu
}  // namespace fastmsfd
