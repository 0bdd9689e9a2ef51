#pragma once
// Plain enums shared by the CPU kernels, the CUDA launchers and the registration file (no torch headers here,
// so nvcc can compile the .cu files without them).
namespace fastmsfd {
enum class DType { Float32, Float16, BFloat16 };
// Memory layout of a (B, C, h, w) feature tensor: NCHW contiguous, or channels_last (NHWC) contiguous.
enum class Layout { NCHW, NHWC };
enum class Aggregate { Sum = 0, Mean = 1, Max = 2, Product = 3 };
// Layers one anomaly_map call takes, on every device (fastmsfd/ops/reference.py MAX_LAYERS says the same).
constexpr int kMaxLayers = 8;
}  // namespace fastmsfd
