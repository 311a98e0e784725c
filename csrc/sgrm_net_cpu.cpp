// SGRM's Aggregation Net at every pixel on the CPU (declared in sgrm_cpu.h): the first k x k
// convolution read straight from the padded input, no patch matrix in memory.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_common.h"
#include "sgrm_cpu.h"

namespace lcar {

namespace {

constexpr int64_t kPixels = 8;  // pixels of a row computed together (one AVX2 register)
constexpr int64_t kUnits = 8;   // first-layer units computed together (their sums in registers)

// Eight floats as one value (GCC / Clang vector extension: one AVX2 register, two SSE ones).
typedef float Pixels __attribute__((vector_size(kPixels * sizeof(float))));

// The first layer's units j0 .. j0 + kUnits - 1 at pixels x0 .. x0 + kPixels - 1 of row y:
// h[j W + x] = relu(b0[j] + sum_t w0t[t width + j] window_t[x]), t over the C k k taps.
__attribute__((always_inline)) inline void first_block(const float* padded, int64_t C,
                                                        int64_t Hp, int64_t Wp, int64_t k,
                                                        int64_t y, int64_t x0, int64_t W,
                                                        const float* w0t, const float* b0,
                                                        int64_t width, int64_t j0, float* h) {
  Pixels acc[kUnits];
  for (int64_t j = 0; j < kUnits; ++j) acc[j] = Pixels{} + b0[j0 + j];
  int64_t t = 0;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t ki = 0; ki < k; ++ki) {
      const float* line = padded + (c * Hp + y + ki) * Wp + x0;
      for (int64_t kj = 0; kj < k; ++kj, ++t) {
        Pixels src;
        std::memcpy(&src, line + kj, sizeof(src));
        const float* w = w0t + t * width + j0;
        for (int64_t j = 0; j < kUnits; ++j) acc[j] += w[j] * src;
      }
    }
  }
  for (int64_t j = 0; j < kUnits; ++j) {
    float* to = h + (j0 + j) * W + x0;
    for (int64_t l = 0; l < kPixels; ++l) to[l] = std::max(acc[j][l], 0.0f);
  }
}

// One image row of one net. w0t: the first layer's weights as (C k k, width_padded), zero
// columns past width; h (width_padded, W) and g (width, W) are scratch.
LCAR_SIMD_CLONES
void net_row(const float* padded, int64_t C, int64_t Hp, int64_t Wp, int64_t k, int64_t y,
             int64_t W, const float* w0t, const float* b0, int64_t width, int64_t width_padded,
             int64_t n_hidden, const float* wh, const float* bh, const float* dw, float db,
             float* h, float* g, uint8_t* out) {
  int64_t x0 = 0;
  for (; x0 + kPixels <= W; x0 += kPixels) {  // Wp = W + k - 1: the windows stay in the row
    for (int64_t j0 = 0; j0 < width_padded; j0 += kUnits) {
      first_block(padded, C, Hp, Wp, k, y, x0, W, w0t, b0, width_padded, j0, h);
    }
  }
  for (int64_t x = x0; x < W; ++x) {  // the row's last pixels, one at a time
    for (int64_t j = 0; j < width; ++j) {
      float acc = b0[j];
      int64_t t = 0;
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t ki = 0; ki < k; ++ki) {
          const float* line = padded + (c * Hp + y + ki) * Wp + x;
          for (int64_t kj = 0; kj < k; ++kj, ++t) acc += w0t[t * width_padded + j] * line[kj];
        }
      }
      h[j * W + x] = std::max(acc, 0.0f);
    }
  }
  for (int64_t l = 0; l < n_hidden; ++l) {
    const float* wl = wh + l * width * width;
    for (int64_t j = 0; j < width; ++j) {
      float* acc = g + j * W;
      std::fill(acc, acc + W, bh[l * width + j]);
      for (int64_t i = 0; i < width; ++i) {
        const float w = wl[j * width + i];
        const float* src = h + i * W;
        for (int64_t x = 0; x < W; ++x) acc[x] += w * src[x];
      }
      for (int64_t x = 0; x < W; ++x) acc[x] = std::max(acc[x], 0.0f);
    }
    std::copy(g, g + width * W, h);
  }
  float* diff = g;
  std::fill(diff, diff + W, db);
  for (int64_t j = 0; j < width; ++j) {
    const float w = dw[j];
    const float* src = h + j * W;
    for (int64_t x = 0; x < W; ++x) diff[x] += w * src[x];
  }
  for (int64_t x = 0; x < W; ++x) out[x] = diff[x] > 0.0f;
}

}  // namespace

void pointwise_argmax_cpu(const float* padded, int64_t A, int64_t C, int64_t Hp, int64_t Wp,
                          int64_t k, const float* w0, const float* b0, int64_t width,
                          int64_t n_hidden, const float* wh, const float* bh, const float* dw,
                          const float* db, uint8_t* out, int num_threads) {
  const int64_t H = Hp - k + 1, W = Wp - k + 1;
  const int64_t taps = C * k * k;
  const int64_t width_padded = (width + kUnits - 1) / kUnits * kUnits;
  // Per net: the first layer's weights as (taps, width_padded) and its biases, zero-padded.
  std::vector<float> w0t(A * taps * width_padded, 0.0f), b0p(A * width_padded, 0.0f);
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t j = 0; j < width; ++j) {
      b0p[a * width_padded + j] = b0[a * width + j];
      for (int64_t t = 0; t < taps; ++t) {
        w0t[(a * taps + t) * width_padded + j] = w0[(a * width + j) * taps + t];
      }
    }
  }
#ifdef LCAR_HAVE_OPENMP
  const int threads = resolve_threads(num_threads);
#pragma omp parallel num_threads(threads)
#else
  (void)num_threads;
#endif
  {
    std::vector<float> h(width_padded * W), g(width * W);
#ifdef LCAR_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t r = 0; r < A * H; ++r) {
      const int64_t a = r / H, y = r % H;
      net_row(padded + a * C * Hp * Wp, C, Hp, Wp, k, y, W, w0t.data() + a * taps * width_padded,
              b0p.data() + a * width_padded, width, width_padded, n_hidden,
              wh + a * n_hidden * width * width, bh + a * n_hidden * width, dw + a * width, db[a],
              h.data(), g.data(), out + r * W);
    }
  }
}

}  // namespace lcar
