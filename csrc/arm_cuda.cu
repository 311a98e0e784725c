#include <cuda_runtime.h>

#include "arm_cuda.h"

namespace lcar {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace lcar
