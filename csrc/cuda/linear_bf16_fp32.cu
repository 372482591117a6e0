// linear_bf16_fp32 on CUDA (SPEC §2.7): x [M, K] bf16 · weight [N, K]ᵀ bf16 -> fp32 [M, N].
// MHC_BF16_FP32_GEMM_ALGO, read at every call (core/flags.h), picks the backend:
//  * cublas (default): cublasGemmEx on bf16 operands with fp32 output and CUBLAS_COMPUTE_32F
//    (fp32 accumulation), on torch's current cuBLAS handle, hence the current stream and
//    torch's workspace (graph-safe). No dependence on torch.mm(out_dtype=...).
//  * fp32: operands upcast to fp32 (exact), then an fp32 GEMM with CUBLAS_COMPUTE_32F_PEDANTIC,
//    which forbids TF32 and other reduced-precision modes whatever the handle's math mode.
// Bound: compute for large shapes (cuBLAS), latency for the router-sized ones.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <cublas_v2.h>

#include <climits>

#include "core/flags.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/common.cuh"
#include "ops.h"

namespace mhc {

Tensor linear_bf16_fp32_cuda(const Tensor& x, const Tensor& weight) {
  constexpr const char* op = "linear_bf16_fp32";
  const GemmDims g = validate_linear_bf16_fp32(x, weight);
  Tensor out = at::empty({g.M, g.N}, x.options().dtype(at::kFloat));
  if (g.M == 0 || g.N == 0) return out;
  TORCH_CHECK(g.M <= INT_MAX && g.N <= INT_MAX && g.K <= INT_MAX, op,
              ": x and weight must have M, N, K < 2^31; got M=", g.M, ", N=", g.N, ", K=", g.K);
  const bool fp32 = bf16_fp32_gemm_is_fp32();

  const c10::cuda::CUDAGuard guard(x.device());
  const int dev = x.get_device();
  record_plan(dev, plan_of(KernelType::LINEAR_BF16_FP32, g.M, 0, g.K, cuda::num_sms(dev),
                           {false, false, fp32}));
  if (g.K == 0) {
    out.zero_();
    return out;
  }
  // Row-major out [M, N] is column-major out^T [N, M] = weight [N, K] · x^T: weight is the
  // transposed column-major [K, N] operand, x the plain column-major [K, M] one.
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // bound to the current stream
  const float alpha = 1.f, beta = 0.f;
  const int M = static_cast<int>(g.M), N = static_cast<int>(g.N), K = static_cast<int>(g.K);
  if (!fp32) {
    const Tensor xc = cuda::aligned_contiguous(x), wc = cuda::aligned_contiguous(weight);
    TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha,
                                      wc.const_data_ptr(), CUDA_R_16BF, K, xc.const_data_ptr(),
                                      CUDA_R_16BF, K, &beta, out.mutable_data_ptr(), CUDA_R_32F,
                                      N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    const Tensor xf = x.to(at::kFloat).contiguous(), wf = weight.to(at::kFloat).contiguous();
    TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha,
                                      wf.const_data_ptr(), CUDA_R_32F, K, xf.const_data_ptr(),
                                      CUDA_R_32F, K, &beta, out.mutable_data_ptr(), CUDA_R_32F,
                                      N, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
  }
  return out;
}

}  // namespace mhc
