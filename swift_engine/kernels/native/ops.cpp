// Registers swift's kernels (weight-only products, row attention, the fused decoder layers) as PyTorch operators (torch.ops.swift_kernels.*), callable
// from Python and from TorchScript, and asks the OS for AMX tiles (the products and attention use
// them where granted, AVX-512 BF16 otherwise).

#include "tiles.h"

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cstdlib>

#include <sys/syscall.h>
#include <unistd.h>

namespace swift_kernels {

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& packed, int64_t group, const at::Tensor& scales_zeros);
at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales);
at::Tensor int8_mm_float(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales);
at::Tensor int8_pack(const at::Tensor& weight);
at::Tensor rows_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& index, const at::Tensor& lengths, double scale);
at::Tensor decoder_layers(const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin,
                          at::TensorList norm_weights, at::ArrayRef<double> norm_eps, at::TensorList weights,
                          at::TensorList scales, at::TensorList qkv_bias, at::TensorList keys, at::TensorList values,
                          at::IntArrayRef lengths, c10::List<bool> skip_attention, c10::List<bool> skip_mlp,
                          int64_t q_heads, int64_t kv_heads, int64_t head_dim, double scaling, int64_t kind,
                          int64_t group, const at::Tensor& rows_index, at::TensorList rows_lengths,
                          const std::optional<at::Tensor>& slots);
at::Tensor rms_norm_op(const at::Tensor& hidden, const at::Tensor& weight, double eps);
int64_t mean_lanes();
bool silu_written_out();

// Whether this process uses AMX tiles: the OS grants them and SWIFT_NATIVE_AMX is not "0" (which
// forces the AVX-512 BF16 path, so a machine with AMX can check that path too). Asked once.
bool amx_granted() {
  static const bool granted = [] {
    const char* wanted = std::getenv("SWIFT_NATIVE_AMX");
    if (wanted != nullptr && wanted[0] == '0') return false;
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return granted;
}

bool uses_vnni() {
  static const bool on = [] {
    const char* wanted = std::getenv("SWIFT_NATIVE_VNNI");
    return !amx_granted() && !(wanted != nullptr && wanted[0] == '0');
  }();
  return on;
}

}  // namespace swift_kernels

// (native_build.py declares the same schema where the library is not loaded)
#define DECODER_LAYERS_SCHEMA                                                                                   \
  "decoder_layers(Tensor hidden, Tensor cos, Tensor sin, Tensor[] norm_weights, float[] norm_eps, "            \
  "Tensor[] weights, Tensor[] scales, Tensor[] qkv_bias, Tensor(a!)[] keys, Tensor(b!)[] values, int[] lengths, " \
  "bool[] skip_attention, bool[] skip_mlp, int q_heads, int kv_heads, int head_dim, float scaling, int kind, "  \
  "int group, Tensor rows_index, Tensor[] rows_lengths, Tensor? slots=None) -> Tensor"

TORCH_LIBRARY(swift_kernels, m) {
  m.def("int4_mm(Tensor x, Tensor packed, int group, Tensor scales_zeros) -> Tensor");
  m.def("int8_mm(Tensor x, Tensor weight, Tensor scales) -> Tensor");
  m.def("int8_mm_float(Tensor x, Tensor weight, Tensor scales) -> Tensor");
  m.def("int8_pack(Tensor weight) -> Tensor");
  m.def("rows_attention(Tensor query, Tensor key, Tensor value, Tensor index, Tensor lengths, float scale) -> Tensor");
  m.def(DECODER_LAYERS_SCHEMA);
  m.def("rms_norm(Tensor hidden, Tensor weight, float eps) -> Tensor");
  m.def("mean_lanes() -> int");
  m.def("silu_written_out() -> bool");
  m.def("uses_amx() -> bool");
  m.def("uses_vnni() -> bool");
}

TORCH_LIBRARY_IMPL(swift_kernels, CatchAll, m) {
  m.impl("mean_lanes", &swift_kernels::mean_lanes);
  m.impl("silu_written_out", &swift_kernels::silu_written_out);
  m.impl("uses_amx", &swift_kernels::amx_granted);
  m.impl("uses_vnni", &swift_kernels::uses_vnni);
}

TORCH_LIBRARY_IMPL(swift_kernels, CPU, m) {
  m.impl("int4_mm", &swift_kernels::int4_mm);
  m.impl("int8_mm", &swift_kernels::int8_mm);
  m.impl("int8_mm_float", &swift_kernels::int8_mm_float);
  m.impl("int8_pack", &swift_kernels::int8_pack);
  m.impl("rows_attention", &swift_kernels::rows_attention);
  m.impl("decoder_layers", &swift_kernels::decoder_layers);
  m.impl("rms_norm", &swift_kernels::rms_norm_op);
}
