// The native 1-bit linear as C++ torch operators, optimum_binarymos_cpu::linear_f32 and ::linear_q8 (activations
// rounded to int8 per token): a packed layer's call goes from the dispatcher straight to bmos_linear_f32 or
// bmos_linear_q8_f32 (binarymos_cpu.c, loaded by library.py, which checks its cache and ABI), without Python in
// between. The kernels' addresses are handed over once (set_kernel, set_kernel_q8).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <optional>

namespace {

using linear_fn = int (*)(const float* x, int64_t M, int64_t K, int64_t ldx, const float* gates, int64_t E,
                          const float* router, const float* scale_in, const float* scale_out, const float* bias,
                          const uint8_t* packed, int64_t N, int64_t ldw, float* y, int64_t ldy, int num_threads);

std::atomic<linear_fn> kernel{nullptr};
std::atomic<linear_fn> kernel_q8{nullptr};

int64_t set_kernel(int64_t address) {
    kernel.store(reinterpret_cast<linear_fn>(address));
    return 0;
}

int64_t set_kernel_q8(int64_t address) {
    kernel_q8.store(reinterpret_cast<linear_fn>(address));
    return 0;
}

void check_table(const at::Tensor& t, const char* name, int64_t rows, int64_t columns) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous() && t.dim() == 2 &&
                    t.size(0) == rows && t.size(1) == columns,
                name, " must be a contiguous float32 CPU tensor of shape (", rows, ", ", columns, ")");
}

// y (M, N) = ((x * s_in) @ sign(W)^T) * s_out + bias, the gates computed from the router (E > 1) in the kernel.
at::Tensor run_linear(linear_fn run, const at::Tensor& x, const at::Tensor& packed, int64_t in_features,
                      const at::Tensor& scale_in, const at::Tensor& scale_out, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& router) {
    TORCH_CHECK(run != nullptr, "optimum_binarymos_cpu: the native kernel was not handed over");
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1 &&
                    x.size(1) == in_features,
                "x must be a 2-D float32 CPU tensor with unit column stride and ", in_features, " columns");
    TORCH_CHECK(packed.scalar_type() == at::kByte && packed.device().is_cpu() && packed.dim() == 2 &&
                    packed.stride(1) == 1 && packed.size(1) == (in_features + 7) / 8,
                "packed must be a 2-D uint8 CPU tensor of ", (in_features + 7) / 8, " bytes per row");
    const int64_t rows = x.size(0), out_features = packed.size(0), experts = scale_in.size(0);
    check_table(scale_in, "scale_in", experts, in_features);
    check_table(scale_out, "scale_out", experts, out_features);
    const float* router_data = nullptr;
    if (router.has_value()) {
        check_table(*router, "router", experts, in_features);
        router_data = router->data_ptr<float>();
    } else {
        TORCH_CHECK(experts == 1, "the router weight is required with ", experts, " experts");
    }
    const float* bias_data = nullptr;
    if (bias.has_value()) {
        check_table(bias->view({1, -1}), "bias", 1, out_features);
        bias_data = bias->data_ptr<float>();
    }
    at::Tensor y = at::empty({rows, out_features}, x.options());
    const int status = run(x.data_ptr<float>(), rows, in_features, x.stride(0), nullptr, experts, router_data,
                           scale_in.data_ptr<float>(), scale_out.data_ptr<float>(), bias_data,
                           packed.data_ptr<uint8_t>(), out_features, packed.stride(0), y.data_ptr<float>(),
                           out_features, at::get_num_threads());
    TORCH_CHECK(status == 0, "the native BinaryMoS kernel could not allocate its scratch buffer");
    return y;
}

at::Tensor linear_f32(const at::Tensor& x, const at::Tensor& packed, int64_t in_features, const at::Tensor& scale_in,
                      const at::Tensor& scale_out, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& router) {
    return run_linear(kernel.load(), x, packed, in_features, scale_in, scale_out, bias, router);
}

at::Tensor linear_q8(const at::Tensor& x, const at::Tensor& packed, int64_t in_features, const at::Tensor& scale_in,
                     const at::Tensor& scale_out, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& router) {
    return run_linear(kernel_q8.load(), x, packed, in_features, scale_in, scale_out, bias, router);
}

}  // namespace

TORCH_LIBRARY(optimum_binarymos_cpu, m) {
    m.def("set_kernel(int address) -> int", &set_kernel);
    m.def("set_kernel_q8(int address) -> int", &set_kernel_q8);
    m.def("linear_f32(Tensor x, Tensor packed, SymInt in_features, Tensor scale_in, Tensor scale_out, Tensor? bias, "
          "Tensor? router) -> Tensor");
    m.def("linear_q8(Tensor x, Tensor packed, SymInt in_features, Tensor scale_in, Tensor scale_out, Tensor? bias, "
          "Tensor? router) -> Tensor");
}

TORCH_LIBRARY_IMPL(optimum_binarymos_cpu, CPU, m) {
    m.impl("linear_f32", &linear_f32);
    m.impl("linear_q8", &linear_q8);
}
