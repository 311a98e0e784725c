// pybind11 bindings of the ARM, every binding in one place (as detectron2's vision.cpp). This file
// is compiled into both modules:
//   _arm_cpu   numpy arrays in and out (float32; other float dtypes and memory layouts are
//              converted: forcecast, C order), OpenMP kernels of arm_cpu.cpp;
//   _arm_cuda  compiled with LCAR_WITH_CUDA: buffers passed as device pointers (integers, e.g.
//              torch's Tensor.data_ptr()) with their shape, so no libtorch link is needed; the
//              caller guarantees contiguous float32 buffers of that shape on `device`. Work is
//              queued on `stream` (e.g. torch.cuda.current_stream().cuda_stream) unsynchronised.
// Both modules bind the settings struct lcar::ArmParams once, here, as `ArmParams`: a keyword-only
// constructor taking every field (no defaults: those live in the Python ArmConfig) that runs
// lcar::check_params, and read-only fields. Every entry point takes it. Bad values, shapes or
// non-finite inputs raise ValueError (std::invalid_argument); the GIL is released while computing.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "arm_common.h"

#ifdef LCAR_WITH_CUDA
#include "arm_cuda.h"
#define LCAR_MODULE_NAME _arm_cuda
#else
#include <pybind11/numpy.h>

#include <cmath>

#include "arm_cpu.h"
#include "sgrm_cpu.h"
#define LCAR_MODULE_NAME _arm_cpu
#endif

namespace py = pybind11;

namespace {

// ---------------------------------------------------------------- settings, both modules

lcar::ArmParams checked_params(std::vector<int> dilations, double eta, int iterations,
                               double w_p, double w_rgb, double w_pos, double sigma_eps) {
  lcar::ArmParams p(std::move(dilations), eta, iterations, w_p, w_rgb, w_pos, sigma_eps);
  lcar::check_params(p);
  return p;
}

void bind_params(py::module_& m) {
  // module_local: each module owns its ArmParams type, so both modules can be imported together
  // (a globally registered C++ type can be registered only once per process).
  py::class_<lcar::ArmParams>(m, "ArmParams", py::module_local(),
                              "ARM settings (see lcar_deploy.stages.arm.ArmConfig, which holds "
                              "the defaults and builds this with native_params); immutable")
      .def(py::init(&checked_params), py::kw_only(), py::arg("dilations"), py::arg("eta"),
           py::arg("iterations"), py::arg("w_p"), py::arg("w_rgb"), py::arg("w_pos"),
           py::arg("sigma_eps"),
           "Every field by keyword, none defaulted; ValueError for a value out of range")
      .def_readonly("dilations", &lcar::ArmParams::dilations)
      .def_readonly("eta", &lcar::ArmParams::eta)
      .def_readonly("iterations", &lcar::ArmParams::iterations)
      .def_readonly("w_p", &lcar::ArmParams::w_p)
      .def_readonly("w_rgb", &lcar::ArmParams::w_rgb)
      .def_readonly("w_pos", &lcar::ArmParams::w_pos)
      .def_readonly("sigma_eps", &lcar::ArmParams::sigma_eps)
      .def_property_readonly(
          "num_neighbours",
          [](const lcar::ArmParams& p) {
            return lcar::kNeighboursPerDilation * static_cast<int>(p.dilations.size());
          },
          "|N| = 8 len(dilations)")
      .def("__repr__", [](const lcar::ArmParams& p) {
        return py::str("ArmParams(dilations={}, eta={!r}, iterations={}, w_p={!r}, w_rgb={!r}, "
                       "w_pos={!r}, sigma_eps={!r})")
            .format(py::cast(p.dilations), p.eta, p.iterations, p.w_p, p.w_rgb, p.w_pos,
                    p.sigma_eps);
      });
}

#ifdef LCAR_WITH_CUDA
// ---------------------------------------------------------------- CUDA: device pointers

void check_sizes(int64_t B, int64_t H, int64_t W) {
  if (B < 0 || H < 1 || W < 1 || H > INT_MAX || W > INT_MAX || B > INT_MAX) {
    throw std::invalid_argument("bad sizes B=" + std::to_string(B) + " H=" + std::to_string(H) +
                                " W=" + std::to_string(W));
  }
}

void check_pointer(std::uintptr_t p, const char* name) {
  if (p == 0) throw std::invalid_argument(std::string(name) + " is a null pointer");
}

void affinities(std::uintptr_t images, std::uintptr_t aff, int64_t B, int64_t H, int64_t W,
                const lcar::ArmParams& params, int device, std::uintptr_t stream) {
  check_sizes(B, H, W);
  if (B == 0) return;
  check_pointer(images, "images");
  check_pointer(aff, "aff");
  py::gil_scoped_release release;
  lcar::affinities_cuda(reinterpret_cast<const float*>(images), reinterpret_cast<float*>(aff), B,
                        static_cast<int>(H), static_cast<int>(W), params, device, stream);
}

void refine(std::uintptr_t e_h, std::uintptr_t images, std::uintptr_t aff, std::uintptr_t work,
            std::uintptr_t out, int64_t B, int64_t H, int64_t W, const lcar::ArmParams& params,
            int device, std::uintptr_t stream) {
  check_sizes(B, H, W);
  if (B == 0) return;
  check_pointer(e_h, "e_h");
  check_pointer(images, "images");
  check_pointer(aff, "aff");
  check_pointer(work, "work");
  check_pointer(out, "out");
  py::gil_scoped_release release;
  lcar::refine_cuda(reinterpret_cast<const float*>(e_h), reinterpret_cast<const float*>(images),
                    reinterpret_cast<float*>(aff), reinterpret_cast<float*>(work),
                    reinterpret_cast<float*>(out), B, static_cast<int>(H), static_cast<int>(W),
                    params, device, stream);
}

#else
// ---------------------------------------------------------------- CPU: numpy arrays

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

void check_ndim(const FloatArray& a, int ndim, const char* name, const char* layout) {
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + " must be " + layout + ", got " +
                                std::to_string(a.ndim()) + " dimensions");
  }
  for (int i = 0; i < ndim; ++i) {
    if (i > 0 && (a.shape(i) < 1 || a.shape(i) > INT_MAX)) {
      throw std::invalid_argument(std::string(name) + " has an empty or too large dimension " +
                                  std::to_string(i));
    }
  }
}

void check_finite(const FloatArray& a, const char* name) {
  const float* p = a.data();
  const py::ssize_t n = a.size();
  for (py::ssize_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) {
      throw std::invalid_argument(std::string(name) + " contains NaN or inf");
    }
  }
}

void check_images(const FloatArray& images) {
  check_ndim(images, 4, "images", "(B, 3, H, W)");
  if (images.shape(1) != 3) {
    throw std::invalid_argument("images must have 3 (RGB) channels, got " +
                                std::to_string(images.shape(1)));
  }
  check_finite(images, "images");
}

void check_map(const FloatArray& e_h, const FloatArray& images) {
  check_ndim(e_h, 3, "e_h", "(B, H, W)");
  if (e_h.shape(0) != images.shape(0) || e_h.shape(1) != images.shape(2) ||
      e_h.shape(2) != images.shape(3)) {
    throw std::invalid_argument("e_h must be (B, H, W) of images (B, 3, H, W)");
  }
  check_finite(e_h, "e_h");
}

py::tuple neighbour_table(const lcar::ArmParams& params) {
  const lcar::NeighbourTable t = lcar::make_neighbour_table(params);
  py::array_t<int> offsets({static_cast<py::ssize_t>(t.count), static_cast<py::ssize_t>(2)});
  py::array_t<double> pos(static_cast<py::ssize_t>(t.count));
  auto o = offsets.mutable_unchecked<2>();
  auto q = pos.mutable_unchecked<1>();
  for (int k = 0; k < t.count; ++k) {
    o(k, 0) = t.dy[k];
    o(k, 1) = t.dx[k];
    q(k) = t.pos[k];
  }
  return py::make_tuple(offsets, pos);
}

py::array_t<float> affinities(const FloatArray& images, const lcar::ArmParams& params,
                              int num_threads) {
  check_images(images);
  const lcar::NeighbourTable t = lcar::make_neighbour_table(params);
  const py::ssize_t B = images.shape(0);
  const int H = static_cast<int>(images.shape(2));
  const int W = static_cast<int>(images.shape(3));
  py::array_t<float> aff({B, static_cast<py::ssize_t>(t.count), static_cast<py::ssize_t>(H),
                          static_cast<py::ssize_t>(W)});
  const float* in = images.data();
  float* out = aff.mutable_data();
  {
    py::gil_scoped_release release;
    lcar::affinities_cpu(in, out, B, H, W, params, num_threads);
  }
  return aff;
}

py::array_t<float> propagate(const FloatArray& e_h, const FloatArray& aff,
                             const lcar::ArmParams& params, int num_threads) {
  const lcar::NeighbourTable t = lcar::make_neighbour_table(params);
  check_ndim(e_h, 3, "e_h", "(B, H, W)");
  check_ndim(aff, 4, "aff", "(B, |N|, H, W)");
  if (aff.shape(0) != e_h.shape(0) || aff.shape(1) != t.count || aff.shape(2) != e_h.shape(1) ||
      aff.shape(3) != e_h.shape(2)) {
    throw std::invalid_argument("aff must be (B, 8 * len(dilations), H, W) of e_h (B, H, W)");
  }
  check_finite(e_h, "e_h");
  check_finite(aff, "aff");
  const py::ssize_t B = e_h.shape(0);
  const int H = static_cast<int>(e_h.shape(1));
  const int W = static_cast<int>(e_h.shape(2));
  py::array_t<float> out({B, static_cast<py::ssize_t>(H), static_cast<py::ssize_t>(W)});
  const float* e = e_h.data();
  const float* a = aff.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    lcar::propagate_cpu(e, a, o, B, H, W, params, num_threads);
  }
  return out;
}

py::array_t<float> refine(const FloatArray& e_h, const FloatArray& images,
                          const lcar::ArmParams& params, int num_threads) {
  check_images(images);
  check_map(e_h, images);
  const py::ssize_t B = e_h.shape(0);
  const int H = static_cast<int>(e_h.shape(1));
  const int W = static_cast<int>(e_h.shape(2));
  py::array_t<float> out({B, static_cast<py::ssize_t>(H), static_cast<py::ssize_t>(W)});
  const float* e = e_h.data();
  const float* img = images.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    lcar::refine_cpu(e, img, o, B, H, W, params, num_threads);
  }
  return out;
}

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::array_t<int64_t> felzenszwalb(const DoubleArray& images, double scale, int64_t min_size,
                                  int num_threads) {
  if (images.ndim() != 4 || images.shape(0) < 1 || images.shape(1) < 1 || images.shape(2) < 1 ||
      images.shape(3) < 1) {
    throw std::invalid_argument("images must be (B, H, W, C) with no empty dimension");
  }
  if (!(scale > 0.0) || min_size < 1) {
    throw std::invalid_argument("scale must be > 0 and min_size >= 1");
  }
  const py::ssize_t B = images.shape(0), H = images.shape(1), W = images.shape(2);
  const py::ssize_t C = images.shape(3);
  if (H * W > INT32_MAX) throw std::invalid_argument("images must have under 2^31 pixels each");
  const double* p = images.data();
  for (py::ssize_t i = 0; i < images.size(); ++i) {
    if (!std::isfinite(p[i])) throw std::invalid_argument("images contain NaN or inf");
  }
  py::array_t<int64_t> labels({B, H, W});
  int64_t* out = labels.mutable_data();
  {
    py::gil_scoped_release release;
    lcar::felzenszwalb_batch_cpu(p, B, H, W, C, scale, min_size, out, num_threads);
  }
  return labels;
}

void strided_patches(const FloatArray& padded, py::array_t<float, py::array::c_style> out,
                     int64_t k, int64_t stride, int64_t row, int64_t col, int64_t rows,
                     int64_t cols, int num_threads) {
  if (padded.ndim() != 4) throw std::invalid_argument("padded must be (A, C, Hp, Wp)");
  const int64_t A = padded.shape(0), C = padded.shape(1), Hp = padded.shape(2);
  const int64_t Wp = padded.shape(3);
  if (k < 1 || stride < 1 || row < 0 || col < 0 || rows < 0 || cols < 0 ||
      (rows > 0 && row + k + stride * (rows - 1) > Hp) ||
      (cols > 0 && col + k + stride * (cols - 1) > Wp)) {
    throw std::invalid_argument("the patches do not lie inside padded");
  }
  if (out.ndim() != 3 || out.shape(0) != A || out.shape(1) != C * k * k ||
      out.shape(2) != rows * cols) {
    throw std::invalid_argument("out must be (A, C k k, rows cols) float32, C order");
  }
  const float* in = padded.data();
  float* o = out.mutable_data();
  py::gil_scoped_release release;
  lcar::strided_patches_cpu(in, o, A, C, Hp, Wp, k, stride, row, col, rows, cols, num_threads);
}

py::array_t<bool> pointwise_argmax(const FloatArray& padded, const FloatArray& w0,
                                   const FloatArray& b0, const FloatArray& wh,
                                   const FloatArray& bh, const FloatArray& dw,
                                   const FloatArray& db, int num_threads) {
  check_ndim(padded, 4, "padded", "(A, C, Hp, Wp)");
  check_ndim(w0, 5, "w0", "(A, width, C, k, k)");
  const int64_t A = padded.shape(0), C = padded.shape(1), Hp = padded.shape(2);
  const int64_t Wp = padded.shape(3), width = w0.shape(1), k = w0.shape(3);
  if (w0.shape(0) != A || w0.shape(2) != C || w0.shape(4) != k || k % 2 == 0 || k > Hp ||
      k > Wp || width < 1) {
    throw std::invalid_argument("w0 must be (A, width, C, k, k), k odd, no larger than padded");
  }
  const int64_t n_hidden = wh.ndim() == 4 ? wh.shape(1) : -1;
  if (n_hidden < 0 || b0.ndim() != 2 || b0.shape(0) != A || b0.shape(1) != width ||
      wh.shape(0) != A || wh.shape(2) != width || wh.shape(3) != width || bh.ndim() != 3 ||
      bh.shape(0) != A || bh.shape(1) != n_hidden || bh.shape(2) != width || dw.ndim() != 2 ||
      dw.shape(0) != A || dw.shape(1) != width || db.ndim() != 1 || db.shape(0) != A) {
    throw std::invalid_argument(
        "b0 (A, width), wh (A, n_hidden, width, width), bh (A, n_hidden, width), dw (A, width) "
        "and db (A,) must match padded and w0");
  }
  const int64_t H = Hp - k + 1, W = Wp - k + 1;
  py::array_t<bool> out({A, H, W});
  auto* o = reinterpret_cast<uint8_t*>(out.mutable_data());
  {
    py::gil_scoped_release release;
    lcar::pointwise_argmax_cpu(padded.data(), A, C, Hp, Wp, k, w0.data(), b0.data(), width,
                               n_hidden, wh.data(), bh.data(), dw.data(), db.data(), o,
                               num_threads);
  }
  return out;
}
#endif

}  // namespace

PYBIND11_MODULE(LCAR_MODULE_NAME, m) {
  bind_params(m);
#ifdef LCAR_WITH_CUDA
  m.doc() = "ARM (affinity refinement module, LCAR eqs. 7-9) on CUDA GPUs, float32";
  m.def("device_count", &lcar::cuda_device_count,
        "CUDA devices visible (0 without a GPU or driver)");
  m.def("affinities", &affinities, py::arg("images"), py::arg("aff"), py::arg("B"), py::arg("H"),
        py::arg("W"), py::arg("params"), py::arg("device"), py::arg("stream"),
        "Eqs. 7-8: images (B, 3, H, W) -> aff (B, 8 * len(dilations), H, W); device pointers");
  m.def("refine", &refine, py::arg("e_h"), py::arg("images"), py::arg("aff"), py::arg("work"),
        py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("params"),
        py::arg("device"), py::arg("stream"),
        "Eqs. 7-9 then min-max: e_h (B, H, W), images (B, 3, H, W) -> out (B, H, W) in [0, 1]; "
        "aff (B, |N|, H, W) and work (B, H, W) are scratch; device pointers");
#else
  m.doc() = "ARM (affinity refinement module, LCAR eqs. 7-9) on the CPU, float32, OpenMP";
  m.def("openmp_max_threads", &lcar::openmp_max_threads,
        "OpenMP threads used when num_threads <= 0 (1 without OpenMP)");
  m.def("neighbour_table", &neighbour_table, py::arg("params"),
        "Neighbour offsets (|N|, 2) int32 as (dy, dx) and the position term w_p * "
        "softmax_N(kappa_pos) (|N|,) float64");
  m.def("affinities", &affinities, py::arg("images"), py::arg("params"), py::arg("num_threads"),
        "Eqs. 7-8: images (B, 3, H, W) RGB -> kappa_aff (B, 8 * len(dilations), H, W); "
        "num_threads <= 0: all");
  m.def("propagate", &propagate, py::arg("e_h"), py::arg("aff"), py::arg("params"),
        py::arg("num_threads"),
        "Eq. 9 iterated: e_h (B, H, W), aff (B, |N|, H, W) -> (B, H, W), not normalised; "
        "num_threads <= 0: all");
  m.def("refine", &refine, py::arg("e_h"), py::arg("images"), py::arg("params"),
        py::arg("num_threads"),
        "Eqs. 7-9 then min-max: e_h (B, H, W), images (B, 3, H, W) -> (B, H, W) in [0, 1]; "
        "num_threads <= 0: all");
  m.def("felzenszwalb", &felzenszwalb, py::arg("images"), py::arg("scale"), py::arg("min_size"),
        py::arg("num_threads"),
        "SGRM's superpixels: Felzenszwalb segments (B, H, W) int64 of smoothed images "
        "(B, H, W, C), as scikit-image's felzenszwalb after its smoothing (csrc/sgrm_cpu.h); "
        "num_threads <= 0: all");
  m.def("strided_patches", &strided_patches, py::arg("padded"), py::arg("out"), py::arg("k"),
        py::arg("stride"), py::arg("row"), py::arg("col"), py::arg("rows"), py::arg("cols"),
        py::arg("num_threads"),
        "SGRM's input patches: padded (A, C, Hp, Wp) -> out (A, C k k, rows cols) float32 "
        "(written in place), F.unfold's layout, at the pixels (row + stride i, col + stride j); "
        "num_threads <= 0: all");
  m.def("pointwise_argmax", &pointwise_argmax, py::arg("padded"), py::arg("w0"), py::arg("b0"),
        py::arg("wh"), py::arg("bh"), py::arg("dw"), py::arg("db"), py::arg("num_threads"),
        "Argmax (A, H, W) bool of A Aggregation Nets with 1x1 later layers at every pixel of "
        "their replicate-padded inputs (A, C, Hp, Wp) (csrc/sgrm_cpu.h); num_threads <= 0: all");
#endif
}
