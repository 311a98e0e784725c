// SGRM's superpixels on the CPU (declared in sgrm_cpu.h).
#include "sgrm_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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

// Order of the (non-negative, so ordered as their bit patterns) costs: LSD radix sort over
// 11-bit digits, stable, passes whose digit is the same for every key skipped.
std::vector<int64_t> sorted_order(const std::vector<double>& costs) {
  const int64_t n = static_cast<int64_t>(costs.size());
  std::vector<uint64_t> keys(n);
  std::memcpy(keys.data(), costs.data(), n * sizeof(double));
  std::vector<int64_t> order(n), scratch(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  constexpr int kBits = 11;
  constexpr int kBuckets = 1 << kBits;
  std::vector<int64_t> count(kBuckets);
  for (int shift = 0; shift < 64; shift += kBits) {
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++count[(keys[i] >> shift) & (kBuckets - 1)];
    if (n == 0 || count[(keys[0] >> shift) & (kBuckets - 1)] == n) continue;
    int64_t total = 0;
    for (int b = 0; b < kBuckets; ++b) {
      const int64_t c = count[b];
      count[b] = total;
      total += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t e = order[i];
      scratch[count[(keys[e] >> shift) & (kBuckets - 1)]++] = e;
    }
    order.swap(scratch);
  }
  return order;
}

}  // namespace

int64_t felzenszwalb_cpu(const double* image, int64_t H, int64_t W, int64_t C, double scale,
                         int64_t min_size, int64_t* labels) {
  const int64_t n_pixels = H * W;
  // Edges (a, b) and their costs in scikit-image's order: right, down, down-right, up-right.
  std::vector<int64_t> ea, eb;
  std::vector<double> costs;
  const int64_t n_edges = H * (W - 1) + (H - 1) * W + 2 * (H - 1) * (W - 1);
  ea.reserve(n_edges);
  eb.reserve(n_edges);
  costs.reserve(n_edges);
  auto add = [&](int64_t a, int64_t b) {
    const double* pa = image + a * C;
    const double* pb = image + b * C;
    double sum = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double d = pa[c] - pb[c];
      sum += d * d;
    }
    ea.push_back(a);
    eb.push_back(b);
    costs.push_back(std::sqrt(sum));
  };
  for (int64_t r = 0; r < H; ++r)
    for (int64_t c = 0; c + 1 < W; ++c) add(r * W + c + 1, r * W + c);
  for (int64_t r = 0; r + 1 < H; ++r)
    for (int64_t c = 0; c < W; ++c) add((r + 1) * W + c, r * W + c);
  for (int64_t r = 0; r + 1 < H; ++r)
    for (int64_t c = 0; c + 1 < W; ++c) add((r + 1) * W + c + 1, r * W + c);
  for (int64_t r = 0; r + 1 < H; ++r)
    for (int64_t c = 0; c + 1 < W; ++c) add(r * W + c + 1, (r + 1) * W + c);
  const std::vector<int64_t> order = sorted_order(costs);
  {  // the edges in that order, so that both passes below read them in sequence
    std::vector<int64_t> sa(n_edges), sb(n_edges);
    std::vector<double> sc(n_edges);
    for (int64_t i = 0; i < n_edges; ++i) {
      sa[i] = ea[order[i]];
      sb[i] = eb[order[i]];
      sc[i] = costs[order[i]];
    }
    ea.swap(sa);
    eb.swap(sb);
    costs.swap(sc);
  }

  std::vector<int64_t> forest(n_pixels), size(n_pixels, 1);
  std::vector<double> cint(n_pixels, 0.0);
  for (int64_t i = 0; i < n_pixels; ++i) forest[i] = i;
  int64_t* f = forest.data();
  const double k = scale / 255.0;
  for (int64_t e = 0; e < n_edges; ++e) {
    const int64_t s0 = find_root(f, ea[e]);
    const int64_t s1 = find_root(f, eb[e]);
    if (s0 == s1) continue;
    const float inner0 = static_cast<float>(cint[s0] + k / static_cast<double>(size[s0]));
    const float inner1 = static_cast<float>(cint[s1] + k / static_cast<double>(size[s1]));
    if (costs[e] < static_cast<double>(std::min(inner0, inner1))) {
      join_trees(f, s0, s1);
      const int64_t merged = find_root(f, s0);
      size[merged] = size[s0] + size[s1];
      cint[merged] = costs[e];
    }
  }
  for (int64_t e = 0; e < n_edges; ++e) {
    const int64_t s0 = find_root(f, ea[e]);
    const int64_t s1 = find_root(f, eb[e]);
    if (s0 == s1) continue;
    if (size[s0] < min_size || size[s1] < min_size) {
      join_trees(f, s0, s1);
      const int64_t merged = find_root(f, s0);
      size[merged] = size[s0] + size[s1];
    }
  }
  // Every pixel's root (a root is no larger than its pixels), numbered in increasing order.
  std::vector<int64_t> id(n_pixels, -1);
  int64_t n_segments = 0;
  for (int64_t i = 0; i < n_pixels; ++i) {
    const int64_t root = find_root(f, i);
    if (id[root] < 0) id[root] = n_segments++;
    labels[i] = id[root];
  }
  return n_segments;
}

}  // namespace lcar
