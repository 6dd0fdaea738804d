// Registers swift's kernels (weight-only products, row attention) as PyTorch operators (torch.ops.swift_kernels.*), callable
// from Python and from TorchScript, and asks the OS for AMX tiles.

#include "tiles.h"

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <sys/syscall.h>
#include <unistd.h>

namespace swift_kernels {

at::Tensor int4_mm_amx(const at::Tensor& x, const at::Tensor& packed, int64_t group, const at::Tensor& scales_zeros);
at::Tensor int8_mm_amx(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales);
at::Tensor rows_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& index, const at::Tensor& lengths, double scale);

bool amx_granted() {
  static const bool granted = [] {
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return granted;
}

}  // namespace swift_kernels

TORCH_LIBRARY(swift_kernels, m) {
  m.def("int4_mm_amx(Tensor x, Tensor packed, int group, Tensor scales_zeros) -> Tensor");
  m.def("int8_mm_amx(Tensor x, Tensor weight, Tensor scales) -> Tensor");
  m.def("rows_attention(Tensor query, Tensor key, Tensor value, Tensor index, Tensor lengths, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(swift_kernels, CPU, m) {
  m.impl("int4_mm_amx", &swift_kernels::int4_mm_amx);
  m.impl("int8_mm_amx", &swift_kernels::int8_mm_amx);
  m.impl("rows_attention", &swift_kernels::rows_attention);
}
