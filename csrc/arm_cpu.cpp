#include "arm_cpu.h"

#ifdef LCAR_HAVE_OPENMP
#include <omp.h>
#endif

namespace lcar {

int openmp_max_threads() {
#ifdef LCAR_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace lcar
