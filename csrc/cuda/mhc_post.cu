// mhc_post on CUDA (docs/spec.md §2.2): new[t, j, h] = bf16(post[t, j]·x[t, h] + Σ_i comb[t, i, j]·
// residual[t, i, h]), each element through post_vec8 (common.cuh), the function the fused op
// uses too. Two grids, chosen by the planner (Plan::block_tokens): (tokens, chunks of 128
// threads x 8 columns), every thread reading the 8 columns of x and of the n old streams with
// 16-byte loads and writing the n new streams; or, from kPostRowTokens, a CTA of 256 threads
// per token walking its H in 2048-column steps with the next step's loads issued before the
// current step's mix ("mhc_post load and store schemes"). The token's gates come from L1.
// Bound: HBM bytes, T·(18H + 80) at n = 4, i.e. copy bandwidth.
// Misaligned x / residual views take the same kernel with 2-byte loads (the output is ours,
// hence aligned).
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/common.cuh"
#include "ops.h"

namespace mhc {
namespace cuda {
namespace {

using mhc::kPostRowThreads;  // core/geometry.h
using mhc::kPostThreads;

struct PostParams {
  const uint16_t* x;    // [T, H] bf16
  const uint16_t* res;  // [T, N, H] bf16
  const float* post;    // [T, N]
  const float* comb;    // [T, N, N]
  uint16_t* out;        // [T, N, H] bf16
  int H;
};

template <bool VEC>
__device__ __forceinline__ uint4 load8(const uint16_t* p) {
  if constexpr (VEC) {
    return ldg16(p);
  } else {
    uint32_t w[4];
#pragma unroll
    for (int q = 0; q < 4; ++q)
      w[q] = static_cast<uint32_t>(__ldg(p + 2 * q)) |
             (static_cast<uint32_t>(__ldg(p + 2 * q + 1)) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// Launch bounds of 8 CTAs per SM (64 registers) up to n = 4: without them ptxas had taken 61
// registers for n = 4 and issued the last of its ten 16-byte loads after the first stream's
// mix, a second DRAM round trip at decode sizes (docs/performance.md, "mhc_post launch bounds"); at 64 all
// ten go out together. Larger n needs more registers than 64 (n = 8 spilled 944 bytes there),
// so it keeps the compiler's choice.
template <int N>
constexpr int post_min_blocks() {
  return N <= 4 ? 8 : 1;
}

// The token's post gates and comb matrix, 16-byte loads where n allows.
template <int N>
__device__ __forceinline__ void load_post_gates(const PostParams& p, int64_t t, float (&post)[N],
                                                float (&comb)[N * N]) {
  if constexpr (N % 4 == 0) {  // 16-byte aligned rows (the launcher makes the gates aligned)
#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(p.post + t * N) + q);
      post[4 * q] = a.x; post[4 * q + 1] = a.y; post[4 * q + 2] = a.z; post[4 * q + 3] = a.w;
    }
#pragma unroll
    for (int q = 0; q < N * N / 4; ++q) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(p.comb + t * N * N) + q);
      comb[4 * q] = a.x; comb[4 * q + 1] = a.y; comb[4 * q + 2] = a.z; comb[4 * q + 3] = a.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) post[j] = __ldg(p.post + t * N + j);
#pragma unroll
    for (int q = 0; q < N * N; ++q) comb[q] = __ldg(p.comb + t * N * N + q);
  }
}

// Columns 8v .. 8v + 7 of token t: x and the n old streams.
template <int N, bool VEC>
__device__ __forceinline__ void load_columns(const PostParams& p, int64_t t, int v, uint4& xv,
                                             uint4 (&old)[N]) {
  const int64_t h = 8 * static_cast<int64_t>(v);
  xv = load8<VEC>(p.x + t * p.H + h);
#pragma unroll
  for (int i = 0; i < N; ++i) old[i] = load8<VEC>(p.res + (t * N + i) * p.H + h);
}

template <int N>
__device__ __forceinline__ void store_columns(const PostParams& p, int64_t t, int v,
                                              const uint4 (&nv)[N]) {
  const int64_t h = 8 * static_cast<int64_t>(v);
#pragma unroll
  for (int j = 0; j < N; ++j) stg16(p.out + (t * N + j) * p.H + h, nv[j]);
}

template <int N, bool VEC>
__global__ void __launch_bounds__(kPostThreads, post_min_blocks<N>()) mhc_post_kernel(
    const PostParams p) {
  const int64_t t = blockIdx.x;
  const int v = blockIdx.y * kPostThreads + threadIdx.x;
  pdl_wait();
  pdl_trigger();
  if (v >= p.H / 8) return;
  float post[N], comb[N * N];
  load_post_gates<N>(p, t, post, comb);
  uint4 xv, old[N], nv[N];
  load_columns<N, VEC>(p, t, v, xv, old);
  post_vec8<N>(post, comb, xv, old, nv);
  store_columns<N>(p, t, v, nv);
}

// A CTA per token (the planner's choice from kPostRowTokens, n <= 4): the threads walk H in
// steps of 8·kPostRowThreads columns; a step's mix and stores run after the next step's loads
// are issued, so each thread keeps two steps' loads in flight.
template <int N, bool VEC>
__global__ void __launch_bounds__(kPostRowThreads) mhc_post_row_kernel(const PostParams p) {
  const int64_t t = blockIdx.x;
  const int vectors = p.H / 8;
  int v = threadIdx.x;
  pdl_wait();
  pdl_trigger();
  if (v >= vectors) return;
  float post[N], comb[N * N];
  load_post_gates<N>(p, t, post, comb);
  uint4 xv, old[N];
  load_columns<N, VEC>(p, t, v, xv, old);
  for (;;) {
    const int next = v + kPostRowThreads;
    const bool more = next < vectors;
    uint4 xn, on[N];
    if (more) load_columns<N, VEC>(p, t, next, xn, on);
    uint4 nv[N];
    post_vec8<N>(post, comb, xv, old, nv);
    store_columns<N>(p, t, v, nv);
    if (!more) break;
    xv = xn;
#pragma unroll
    for (int i = 0; i < N; ++i) old[i] = on[i];
    v = next;
  }
}

// The row kernel exists for n <= 4 only, the plans that take it.
template <int N>
void launch_post(bool row, bool vec, int dev, dim3 grid, dim3 block, cudaStream_t stream,
                 const PostParams& p) {
  if constexpr (N <= 4) {
    if (row) {
      if (vec) launch(mhc_post_row_kernel<N, true>, dev, grid, block, 0, stream, p);
      else launch(mhc_post_row_kernel<N, false>, dev, grid, block, 0, stream, p);
      return;
    }
  }
  TORCH_INTERNAL_ASSERT(!row, "mhc_post: no CTA-per-token kernel for n = ", N);
  if (vec) launch(mhc_post_kernel<N, true>, dev, grid, block, 0, stream, p);
  else launch(mhc_post_kernel<N, false>, dev, grid, block, 0, stream, p);
}

}  // namespace
}  // namespace cuda

Tensor mhc_post_cuda(const Tensor& x, const Tensor& residual, const Tensor& post_mix,
                     const Tensor& comb_mix) {
  const StreamDims d = validate_mhc_post(x, residual, post_mix, comb_mix);
  Tensor out = at::empty({d.T, d.n, d.H}, residual.options());
  if (d.T == 0) return out;

  const c10::cuda::CUDAGuard guard(residual.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int dev = residual.get_device();
  const Tensor xc = x.contiguous(), res = residual.contiguous();
  const Tensor post = cuda::aligned_contiguous(post_mix);
  const Tensor comb = cuda::aligned_contiguous(comb_mix);
  const Plan plan = plan_of(KernelType::MHC_POST, d.T, d.n, d.H, cuda::num_sms(dev), {});
  record_plan(dev, plan);

  const cuda::PostParams p{cuda::bf16_ptr(xc), cuda::bf16_ptr(res), post.const_data_ptr<float>(),
                           comb.const_data_ptr<float>(), cuda::bf16_mut(out),
                           static_cast<int>(d.H)};
  const bool vec = cuda::aligned16(p.x) && cuda::aligned16(p.res);
  const Launch l = launches_of(plan, d.T, d.n, d.H, {}).step[0];
  const bool row = plan.block_tokens == 1;
  TORCH_INTERNAL_ASSERT(l.role == KernelRole::POST &&
                        l.block == (row ? cuda::kPostRowThreads : cuda::kPostThreads));
  const dim3 grid(static_cast<unsigned>(l.grid_x), static_cast<unsigned>(l.grid_y));
  const dim3 block(static_cast<unsigned>(l.block));
  MHC_DISPATCH_HC_MULT(d.n, N, [&] { cuda::launch_post<N>(row, vec, dev, grid, block, stream, p); });
  return out;
}

}  // namespace mhc
