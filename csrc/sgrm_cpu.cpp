// SGRM's superpixels on the CPU (declared in sgrm_cpu.h).
#include "sgrm_cpu.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_common.h"

namespace lcar {

namespace {

// Union-find of scikit-image's measure._ccomp: a node's parent never has a larger index, and a
// root points to itself. find_root also halves the path it walks (scikit-image's does not): the
// roots, and so every decision, stay the same, the walks get short.
inline int64_t find_root(int64_t* forest, int64_t n) {
  while (forest[n] < n) {
    forest[n] = forest[forest[n]];
    n = forest[n];
  }
  return n;
}

inline void set_root(int64_t* forest, int64_t n, int64_t root) {
  while (forest[n] < n) {
    const int64_t j = forest[n];
    forest[n] = root;
    n = j;
  }
  forest[n] = root;
}

inline void join_trees(int64_t* forest, int64_t n, int64_t m) {
  if (n == m) return;
  int64_t root = find_root(forest, n);
  const int64_t root_m = find_root(forest, m);
  if (root > root_m) root = root_m;
  set_root(forest, n, root);
  set_root(forest, m, root);
}

// One edge of the grid: its cost's bits (costs are non-negative, so they order as their bit
// patterns) and its two pixels, a and b as scikit-image names them.
struct Edge {
  uint64_t key;
  int32_t a;
  int32_t b;
};

// Sorts edges by cost, equal costs keeping their order: LSD radix sort over 11-bit digits
// (stable; all histograms from one read), passes whose digit is the same for every edge
// skipped. scratch: as many edges, overwritten.
void sort_edges(std::vector<Edge>& edges, std::vector<Edge>& scratch) {
  constexpr int kBits = 11;
  constexpr int kBuckets = 1 << kBits;
  constexpr int kPasses = (64 + kBits - 1) / kBits;
  const size_t n = edges.size();
  if (n < 2) return;
  std::vector<std::array<size_t, kBuckets>> count(kPasses);
  for (auto& c : count) c.fill(0);
  for (const Edge& e : edges) {
    for (int p = 0; p < kPasses; ++p) ++count[p][(e.key >> (p * kBits)) & (kBuckets - 1)];
  }
  for (int p = 0; p < kPasses; ++p) {
    auto& c = count[p];
    const int shift = p * kBits;
    if (c[(edges[0].key >> shift) & (kBuckets - 1)] == n) continue;
    size_t total = 0;
    for (int b = 0; b < kBuckets; ++b) {
      const size_t k = c[b];
      c[b] = total;
      total += k;
    }
    for (const Edge& e : edges) scratch[c[(e.key >> shift) & (kBuckets - 1)]++] = e;
    edges.swap(scratch);
  }
}

// A thread's working memory, kept from one image to the next (fresh pages are slow to touch).
struct Workspace {
  std::vector<Edge> edges, scratch;
  std::vector<int64_t> forest, size, id;
  std::vector<double> cint;
};

}  // namespace

int64_t felzenszwalb_cpu(const double* image, int64_t H, int64_t W, int64_t C, double scale,
                         int64_t min_size, int64_t* labels) {
  thread_local Workspace ws;
  const int64_t n_pixels = H * W;
  // The edges in scikit-image's order: right (a = p + 1, b = p), down (p + W, p), down-right
  // (p + W + 1, p), each over its pixels p row-major, then up-right (r W + c + 1, (r + 1) W + c).
  const int64_t n_edges = H * (W - 1) + (H - 1) * W + 2 * (H - 1) * (W - 1);
  std::vector<Edge>& edges = ws.edges;
  edges.resize(n_edges);
  ws.scratch.resize(n_edges);
  int64_t e = 0;
  auto add = [&](int64_t a, int64_t b) {
    const double* pa = image + a * C;
    const double* pb = image + b * C;
    double sum = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double d = pa[c] - pb[c];
      sum += d * d;
    }
    const double cost = std::sqrt(sum);
    std::memcpy(&edges[e].key, &cost, sizeof(double));
    edges[e].a = static_cast<int32_t>(a);
    edges[e++].b = static_cast<int32_t>(b);
  };
  for (int64_t r = 0; r < H; ++r) {
    for (int64_t c = 0; c + 1 < W; ++c) add(r * W + c + 1, r * W + c);
  }
  for (int64_t p = 0; p < (H - 1) * W; ++p) add(p + W, p);
  for (int64_t r = 0; r + 1 < H; ++r) {
    for (int64_t c = 0; c + 1 < W; ++c) add((r + 1) * W + c + 1, r * W + c);
  }
  for (int64_t r = 0; r + 1 < H; ++r) {
    for (int64_t c = 0; c + 1 < W; ++c) add(r * W + c + 1, (r + 1) * W + c);
  }
  sort_edges(edges, ws.scratch);

  std::vector<int64_t>& forest = ws.forest;
  std::vector<int64_t>& size = ws.size;
  std::vector<double>& cint = ws.cint;
  forest.resize(n_pixels);
  size.assign(n_pixels, 1);
  cint.assign(n_pixels, 0.0);
  for (int64_t i = 0; i < n_pixels; ++i) forest[i] = i;
  int64_t* f = forest.data();
  const double k = scale / 255.0;
  for (const Edge& edge : edges) {
    const int64_t s0 = find_root(f, edge.a);
    const int64_t s1 = find_root(f, edge.b);
    if (s0 == s1) continue;
    double cost;
    std::memcpy(&cost, &edge.key, sizeof(double));
    const float inner0 = static_cast<float>(cint[s0] + k / static_cast<double>(size[s0]));
    const float inner1 = static_cast<float>(cint[s1] + k / static_cast<double>(size[s1]));
    if (cost < static_cast<double>(std::min(inner0, inner1))) {
      join_trees(f, s0, s1);
      const int64_t merged = find_root(f, s0);
      size[merged] = size[s0] + size[s1];
      cint[merged] = cost;
    }
  }
  for (const Edge& edge : edges) {
    const int64_t s0 = find_root(f, edge.a);
    const int64_t s1 = find_root(f, edge.b);
    if (s0 == s1) continue;
    if (size[s0] < min_size || size[s1] < min_size) {
      join_trees(f, s0, s1);
      const int64_t merged = find_root(f, s0);
      size[merged] = size[s0] + size[s1];
    }
  }
  // Every pixel's root (a root is no larger than its pixels), numbered in increasing order.
  std::vector<int64_t>& id = ws.id;
  id.assign(n_pixels, -1);
  int64_t n_segments = 0;
  for (int64_t i = 0; i < n_pixels; ++i) {
    const int64_t root = find_root(f, i);
    if (id[root] < 0) id[root] = n_segments++;
    labels[i] = id[root];
  }
  return n_segments;
}

void felzenszwalb_batch_cpu(const double* images, int64_t B, int64_t H, int64_t W, int64_t C,
                            double scale, int64_t min_size, int64_t* labels, int num_threads) {
#ifdef LCAR_HAVE_OPENMP
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for num_threads(threads) schedule(dynamic)
#else
  (void)num_threads;
#endif
  for (int64_t b = 0; b < B; ++b) {
    felzenszwalb_cpu(images + b * H * W * C, H, W, C, scale, min_size, labels + b * H * W);
  }
}

void strided_patches_cpu(const float* padded, float* out, int64_t A, int64_t C, int64_t Hp,
                         int64_t Wp, int64_t k, int64_t stride, int64_t row, int64_t col,
                         int64_t rows, int64_t cols, int num_threads) {
  const int64_t n_rows = A * C * k * k;
  const int64_t n_pixels = rows * cols;
#ifdef LCAR_HAVE_OPENMP
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for num_threads(threads) schedule(static)
#else
  (void)num_threads;
#endif
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t kj = r % k, ki = (r / k) % k, plane = r / (k * k);  // plane = a C + c
    const float* src = padded + plane * Hp * Wp + (row + ki) * Wp + col + kj;
    float* dst = out + r * n_pixels;
    for (int64_t i = 0; i < rows; ++i) {
      const float* line = src + stride * i * Wp;
      float* to = dst + i * cols;
      for (int64_t j = 0; j < cols; ++j) to[j] = line[stride * j];
    }
  }
}

}  // namespace lcar
