// CPU kernel of the Gaussian receptive-field up-sampling, layer aggregation and image score
// (reference: fastmsfd/ops/reference.py::upsample, aggregate, image_score).
// Separable: a column pass (h x w -> h x W) into a small buffer, then a row pass that writes each heatmap row
// once, with all layers combined while the row is in L1. Only the non-zero band of each Gaussian row is visited.
#include "upsample_cpu.h"
#include "simd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

namespace fastmsfd {
namespace cpu {

namespace {
// [lo, hi) of the non-zero entries of each row of a dense (rows x cols) matrix.
struct Band {
  std::vector<int64_t> lo, hi;
};

Band band_of(const float* g, int64_t rows, int64_t cols) {
  Band b{std::vector<int64_t>(rows), std::vector<int64_t>(rows)};
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = g + r * cols;
    int64_t lo = 0, hi = cols;
    while (lo < cols && row[lo] == 0.f) ++lo;
    while (hi > lo && row[hi - 1] == 0.f) --hi;
    b.lo[r] = lo;
    b.hi[r] = hi;
  }
  return b;
}

bool all_finite(const float* x, int64_t n) {
  bool ok = true;
#pragma omp simd reduction(&& : ok)
  for (int64_t i = 0; i < n; ++i) ok = ok && std::isfinite(x[i]);
  return ok;
}

FASTMSFD_INLINE void combine(float* out, const float* row, float weight, Aggregate mode, bool first, int64_t W) {
  if (first) {
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) out[x] = weight * row[x];
    return;
  }
  switch (mode) {
    case Aggregate::Sum:
    case Aggregate::Mean:
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) out[x] += weight * row[x];
      break;
    case Aggregate::Max:
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) out[x] = std::max(out[x], weight * row[x]);
      break;
    case Aggregate::Product:
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) out[x] *= weight * row[x];
      break;
  }
}

FASTMSFD_CPU_CLONES void column_pass(const LayerMap& l, const Band& cb, int64_t W, float* tmp, int64_t begin,
                                     int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* drow = l.d + r * l.w;
    float* trow = tmp + r * W;
    for (int64_t x = 0; x < W; ++x) {
      const float* g = l.g_cols + x * l.w;
      float acc = 0.f;
      for (int64_t j = cb.lo[x]; j < cb.hi[x]; ++j) acc += g[j] * drow[j];
      trow[x] = acc;
    }
  }
}

FASTMSFD_CPU_CLONES void row_pass(const std::vector<LayerMap>& layers, const std::vector<Band>& row_bands,
                                  const std::vector<std::unique_ptr<float[]>>& tmp, const std::vector<char>& finite,
                                  Aggregate mode, float scale, int64_t H, int64_t W, float* heat, int64_t begin,
                                  int64_t end) {
  const int64_t L = static_cast<int64_t>(layers.size());
  std::unique_ptr<float[]> row(new float[W]);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / H, y = task % H;
    float* out = heat + task * W;
    if (!finite[b]) {
      std::fill(out, out + W, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    for (int64_t li = 0; li < L; ++li) {
      const LayerMap& l = layers[li];
      const float* g = l.g_rows + y * l.h;
      const float* t = tmp[li].get() + b * l.h * W;
      float* r = row.get();
      std::fill(r, r + W, 0.f);
      for (int64_t i = row_bands[li].lo[y]; i < row_bands[li].hi[y]; ++i) {
        const float gi = g[i];
        const float* trow = t + i * W;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) r[x] += gi * trow[x];
      }
      combine(out, r, l.weight, mode, li == 0, W);
    }
    if (scale != 1.f) {
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) out[x] *= scale;
    }
  }
}
}  // namespace

void upsample_aggregate(const std::vector<LayerMap>& layers, Aggregate mode, int64_t B, int64_t H, int64_t W,
                        float* heat) {
  const int64_t L = static_cast<int64_t>(layers.size());
  std::vector<Band> row_bands, col_bands;
  std::vector<std::unique_ptr<float[]>> tmp;  // per layer (B, h, W): the column pass
  for (const auto& l : layers) {
    row_bands.push_back(band_of(l.g_rows, H, l.h));
    col_bands.push_back(band_of(l.g_cols, W, l.w));
    tmp.emplace_back(new float[B * l.h * W]);
  }
  std::vector<char> finite(B);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      bool ok = true;
      for (const auto& l : layers) ok = ok && all_finite(l.d + b * l.h * l.w, l.h * l.w);
      finite[b] = ok;
    }
  });
  for (int64_t li = 0; li < L; ++li) {
    const LayerMap& l = layers[li];
    const Band& cb = col_bands[li];
    float* t = tmp[li].get();
    at::parallel_for(0, B * l.h, 8, [&](int64_t begin, int64_t end) { column_pass(l, cb, W, t, begin, end); });
  }
  const float scale = mode == Aggregate::Mean ? 1.f / static_cast<float>(L) : 1.f;
  at::parallel_for(0, B * H, 4, [&](int64_t begin, int64_t end) {
    row_pass(layers, row_bands, tmp, finite, mode, scale, H, W, heat, begin, end);
  });
}

void image_score(const float* heat, int64_t B, int64_t HW, int64_t k, float* score) {
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<float[]> buf(k > 0 ? new float[HW] : nullptr);
    for (int64_t b = begin; b < end; ++b) {
      const float* h = heat + b * HW;
      bool has_nan = false;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < HW; ++i) {
        has_nan = has_nan || std::isnan(h[i]);
        mx = std::max(mx, h[i]);
      }
      if (has_nan) {
        score[b] = std::numeric_limits<float>::quiet_NaN();
      } else if (k <= 0) {
        score[b] = mx;
      } else {
        const int64_t kk = std::min(k, HW);
        std::copy(h, h + HW, buf.get());
        std::nth_element(buf.get(), buf.get() + (kk - 1), buf.get() + HW, std::greater<float>());
        double acc = 0.0;
        for (int64_t i = 0; i < kk; ++i) acc += buf[i];
        score[b] = static_cast<float>(acc / static_cast<double>(kk));
      }
    }
  });
}

}  // namespace cpu
}  // namespace fastmsfd
