// pybind11 bindings of the CUDA ARM. Buffers are passed as device pointers (integers, e.g. torch's
// Tensor.data_ptr()) with their shape, so no libtorch link is needed; the caller guarantees that
// they are contiguous float32 buffers of that shape on `device`. Work is queued on `stream`
// (e.g. torch.cuda.current_stream().cuda_stream) without synchronising.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "arm_cuda.h"

namespace py = pybind11;

namespace {

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
                const std::vector<int>& dilations, double w_p, double w_rgb, double w_pos,
                double sigma_eps, int device, std::uintptr_t stream) {
  check_sizes(B, H, W);
  const lcar::ArmParams p = lcar::make_params(dilations, 0.1, 0, w_p, w_rgb, w_pos, sigma_eps);
  if (B == 0) return;
  check_pointer(images, "images");
  check_pointer(aff, "aff");
  py::gil_scoped_release release;
  lcar::affinities_cuda(reinterpret_cast<const float*>(images), reinterpret_cast<float*>(aff), B,
                        static_cast<int>(H), static_cast<int>(W), p, device, stream);
}

void refine(std::uintptr_t e_h, std::uintptr_t images, std::uintptr_t aff, std::uintptr_t work,
            std::uintptr_t out, int64_t B, int64_t H, int64_t W, const std::vector<int>& dilations,
            double eta, int iterations, double w_p, double w_rgb, double w_pos, double sigma_eps,
            int device, std::uintptr_t stream) {
  check_sizes(B, H, W);
  const lcar::ArmParams p = lcar::make_params(dilations, eta, iterations, w_p, w_rgb, w_pos, sigma_eps);
  if (B == 0) return;
  check_pointer(e_h, "e_h");
  check_pointer(images, "images");
  check_pointer(aff, "aff");
  check_pointer(work, "work");
  check_pointer(out, "out");
  py::gil_scoped_release release;
  lcar::refine_cuda(reinterpret_cast<const float*>(e_h), reinterpret_cast<const float*>(images),
                    reinterpret_cast<float*>(aff), reinterpret_cast<float*>(work),
                    reinterpret_cast<float*>(out), B, static_cast<int>(H), static_cast<int>(W), p,
                    device, stream);
}

}  // namespace

PYBIND11_MODULE(_arm_cuda, m) {
  m.doc() = "ARM (affinity refinement module, LCAR eqs. 7-9) on CUDA GPUs, float32";
  m.def("device_count", &lcar::cuda_device_count,
        "CUDA devices visible (0 without a GPU or driver)");
  m.def("affinities", &affinities, py::arg("images"), py::arg("aff"), py::arg("B"), py::arg("H"),
        py::arg("W"), py::arg("dilations"), py::arg("w_p") = 0.01, py::arg("w_rgb") = 0.3,
        py::arg("w_pos") = 0.3, py::arg("sigma_eps") = 1e-8, py::arg("device") = 0,
        py::arg("stream") = 0,
        "Eqs. 7-8: images (B, 3, H, W) -> aff (B, 8 * len(dilations), H, W); device pointers");
  m.def("refine", &refine, py::arg("e_h"), py::arg("images"), py::arg("aff"), py::arg("work"),
        py::arg("out"), py::arg("B"), py::arg("H"), py::arg("W"), py::arg("dilations"),
        py::arg("eta") = 0.1, py::arg("iterations") = 50, py::arg("w_p") = 0.01,
        py::arg("w_rgb") = 0.3, py::arg("w_pos") = 0.3, py::arg("sigma_eps") = 1e-8,
        py::arg("device") = 0, py::arg("stream") = 0,
        "Eqs. 7-9 then min-max: e_h (B, H, W), images (B, 3, H, W) -> out (B, H, W) in [0, 1]; "
        "aff (B, |N|, H, W) and work (B, H, W) are scratch; device pointers");
}
