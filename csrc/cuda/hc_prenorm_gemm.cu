// hc_prenorm_gemm / tf32_hc_prenorm_gemm on CUDA (docs/spec.md §2.5), a drop-in for DeepGEMM's on any
// sm_80+ GPU. For each split s (contiguous 64-wide K blocks, split_range) and row m:
// out[s, m, :] = x[m, Ks] · fn[:, Ks]ᵀ and sqrsum[s, m] = Σ x[m, Ks]², with fn split into three
// bf16 terms on tensor cores (common.cuh): ~2^-27 per product, as good as exact fp32, where
// DeepGEMM's truncation to TF32 is not. Grid (blocks of 64 rows, splits); the 8 warps of a CTA take the
// 32-wide K chunks of the split in turn and are added in warp order in shared memory; sums of
// squares run in double across chunks, so even one split over K = 28672 stays within 1e-6.
// Bound: HBM bytes of x at large M (fn is re-read from L2 once per 64 rows), latency at small M
// with the caller's split count spreading K over the SMs. K % 8 != 0 or misaligned views take
// the same kernel with scalar, bounds-checked loads.
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/common.cuh"
#include "ops.h"

namespace mhc {
namespace cuda {
namespace {

constexpr int kTiles = kPrenormTiles;  // 16-row mma tiles per CTA (core/geometry.h)
constexpr int kRows = kPrenormRows;
constexpr int kWarps = kPrenormWarps;
// fn as three bf16 terms: ~2^-27 per product, so even a single 64-wide split whose dot product
// cancels to almost nothing stays within the per-split bound of docs/spec.md §3.
constexpr int kParts = 3;

struct PrenormParams {
  const uint16_t* x;  // [M, K] bf16
  const float* fn;    // [N, K]
  float* out;         // [S, M, N]
  float* sqrsum;      // [S, M]
  int64_t M;
  int N, K, S;
};

template <bool VEC>
__device__ __forceinline__ uint4 load_x8(const uint16_t* row, int k, int k1) {
  if constexpr (VEC) {
    return k < k1 ? ldg16(row + k) : make_uint4(0u, 0u, 0u, 0u);
  } else {
    uint32_t w[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t lo = k + 2 * q < k1 ? __ldg(row + k + 2 * q) : 0u;
      const uint32_t hi = k + 2 * q + 1 < k1 ? __ldg(row + k + 2 * q + 1) : 0u;
      w[q] = lo | (hi << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// The lane's 8 fn values of one row at k (zero past k1), raw fp32.
template <bool VEC>
__device__ __forceinline__ void load_fn8(const float* row, int k, int k1, float4 (&f)[2]) {
  if constexpr (VEC) {
    const bool ok = k < k1;
    f[0] = ok ? __ldg(reinterpret_cast<const float4*>(row + k)) : make_float4(0.f, 0.f, 0.f, 0.f);
    f[1] = ok ? __ldg(reinterpret_cast<const float4*>(row + k) + 1)
              : make_float4(0.f, 0.f, 0.f, 0.f);
  } else {
    float e[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) e[j] = k + j < k1 ? __ldg(row + k + j) : 0.f;
    f[0] = make_float4(e[0], e[1], e[2], e[3]);
    f[1] = make_float4(e[4], e[5], e[6], e[7]);
  }
}

// Dynamic shared memory: per-warp slices red [kWarps][kRows][8 NT] floats, then
// red_ss [kWarps][kRows] doubles.
template <int NT, bool VEC>
__global__ void __launch_bounds__(kWarps * 32, 1) prenorm_kernel(const PrenormParams p) {
  constexpr int NP = 8 * NT;
  extern __shared__ double smem_d[];
  double* red_ss = smem_d;
  float* red = reinterpret_cast<float*>(red_ss + kWarps * kRows);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int s = blockIdx.y;
  // split_range of core/validate.h
  const int nblocks = (p.K + 63) / 64, q = nblocks / p.S, rem = nblocks % p.S;
  const int b0 = s * q + min(s, rem), nb = q + (s < rem ? 1 : 0);
  const int k0 = min(b0 * 64, p.K), k1 = min((b0 + nb) * 64, p.K);
  const int nch = (k1 - k0 + 31) / 32;

  pdl_wait();
  pdl_trigger();

  float acc[kTiles][NT][4];
  double ss[kTiles][2];
#pragma unroll
  for (int tt = 0; tt < kTiles; ++tt) {
    ss[tt][0] = ss[tt][1] = 0.0;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[tt][nt][e] = 0.f;
  }
  // The next chunk's loads are issued before the current chunk is computed.
  struct ChunkData {
    float4 fr[NT][2];
    uint4 v[kTiles][2];
  };
  const auto load_chunk = [&](int ch, ChunkData& d) {
    const int k = k0 + 32 * ch + 8 * c;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      load_fn8<VEC>(p.fn + static_cast<int64_t>(8 * nt + g) * p.K, k,
                    8 * nt + g < p.N ? k1 : k, d.fr[nt]);  // rows past N load nothing
#pragma unroll
    for (int tt = 0; tt < kTiles; ++tt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int64_t m = m0 + 16 * tt + g + 8 * hf;
        d.v[tt][hf] = m < p.M ? load_x8<VEC>(p.x + m * p.K, k, k1) : make_uint4(0u, 0u, 0u, 0u);
      }
  };
  // Prefetching needs a second set of registers; N > 24 (NT = 4) has none to spare.
  constexpr bool kPrefetch = NT <= 3;
  ChunkData cur;
  if (kPrefetch && warp < nch) load_chunk(warp, cur);
  for (int ch = warp; ch < nch; ch += kWarps) {
    ChunkData nxt;
    if (!kPrefetch) load_chunk(ch, cur);
    if (kPrefetch && ch + kWarps < nch) load_chunk(ch + kWarps, nxt);
    FnFrag<kParts> f[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float4 a = cur.fr[nt][0], b = cur.fr[nt][1];
      const float v8[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      f[nt] = make_frag<kParts>(v8);
    }
#pragma unroll
    for (int tt = 0; tt < kTiles; ++tt) {
      if (m0 + 16 * tt >= p.M) continue;  // a tile past the last row (small M)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma_chunk(acc[tt][nt], cur.v[tt][0], cur.v[tt][1], f[nt]);
      ss[tt][0] += add_sumsq8(cur.v[tt][0], 0.f);
      ss[tt][1] += add_sumsq8(cur.v[tt][1], 0.f);
    }
    if (kPrefetch) cur = nxt;
  }
#pragma unroll
  for (int tt = 0; tt < kTiles; ++tt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) ss[tt][hf] = quad_sum(ss[tt][hf]);
  // Per-warp slices, then the warps added in warp order for the live rows.
  const int nwork = min(kWarps, nch);
  const int rows = p.M - m0 < kRows ? static_cast<int>(p.M - m0) : kRows;
  if (warp < nwork) {
    float* mine = red + warp * kRows * NP;
#pragma unroll
    for (int tt = 0; tt < kTiles; ++tt) {
      if (16 * tt >= rows) continue;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          mine[(16 * tt + g + 8 * (e >> 1)) * NP + 8 * nt + 2 * c + (e & 1)] = acc[tt][nt][e];
      if (c == 0) {
        red_ss[warp * kRows + 16 * tt + g] = ss[tt][0];
        red_ss[warp * kRows + 16 * tt + g + 8] = ss[tt][1];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < rows * p.N; idx += blockDim.x) {
    const int r = idx / p.N, o = idx % p.N;
    float a = red[r * NP + o];
    for (int w = 1; w < nwork; ++w) a += red[(w * kRows + r) * NP + o];
    p.out[(s * p.M + m0 + r) * p.N + o] = a;
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    double a = red_ss[r];
    for (int w = 1; w < nwork; ++w) a += red_ss[w * kRows + r];
    p.sqrsum[s * p.M + m0 + r] = static_cast<float>(a);
  }
}

// out [S, M, N] and sqrsum [S, M], contiguous fp32.
void prenorm_into(const Tensor& x, const Tensor& fn, int64_t S, const Tensor& out,
                  const Tensor& sqrsum) {
  const int64_t M = x.size(0), K = x.size(1), N = fn.size(0);
  const int dev = x.get_device();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  TORCH_CHECK(K <= INT32_MAX / 2, "hc_prenorm_gemm: x must have K < 2^30; got ", K);
  Plan plan = plan_of(KernelType::PRENORM_GEMM, M, 1, K, num_sms(dev), {});
  TORCH_INTERNAL_ASSERT(plan.block_tokens == kRows);
  plan.num_splits = static_cast<int32_t>(S);  // the caller's split count is what runs
  record_plan(dev, plan);
  const Launch l = launches_of(plan, M, N, K, {}).step[0];

  const Tensor xc = x.contiguous(), w = fn.contiguous();
  const PrenormParams p{bf16_ptr(xc), w.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                        sqrsum.mutable_data_ptr<float>(), M, static_cast<int>(N),
                        static_cast<int>(K), static_cast<int>(S)};
  const bool vec = K % 8 == 0 && aligned16(p.x) && aligned16(p.fn);
  const dim3 grid(static_cast<unsigned>(l.grid_x), static_cast<unsigned>(l.grid_y));
  const dim3 block(static_cast<unsigned>(l.block));
  const int nt = static_cast<int>((N + 7) / 8);
  const size_t smem = static_cast<size_t>(l.smem);
  TORCH_INTERNAL_ASSERT(l.role == KernelRole::PRENORM && l.block == kWarps * 32 &&
                        smem == kWarps * kRows * (sizeof(double) + sizeof(float) * 8 * nt));
  const auto go = [&](auto kernel) { launch(kernel, dev, grid, block, smem, stream, p); };
  switch (nt) {
    case 1: return vec ? go(prenorm_kernel<1, true>) : go(prenorm_kernel<1, false>);
    case 2: return vec ? go(prenorm_kernel<2, true>) : go(prenorm_kernel<2, false>);
    case 3: return vec ? go(prenorm_kernel<3, true>) : go(prenorm_kernel<3, false>);
    default: return vec ? go(prenorm_kernel<4, true>) : go(prenorm_kernel<4, false>);
  }
}

}  // namespace
}  // namespace cuda

std::tuple<Tensor, Tensor> hc_prenorm_gemm_cuda(const Tensor& x, const Tensor& fn,
                                                int64_t num_splits) {
  const GemmDims g = validate_hc_prenorm_gemm(x, fn, num_splits);
  Tensor out = at::empty({num_splits, g.M, g.N}, x.options().dtype(at::kFloat));
  Tensor sqrsum = at::empty({num_splits, g.M}, x.options().dtype(at::kFloat));
  if (g.M == 0) return {out, sqrsum};
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::prenorm_into(x, fn, num_splits, out, sqrsum);
  return {out, sqrsum};
}

void tf32_hc_prenorm_gemm_cuda(const Tensor& x, const Tensor& fn, const Tensor& out,
                               const Tensor& sqrsum, std::optional<int64_t> num_splits) {
  const GemmDims g = validate_tf32_hc_prenorm_gemm(x, fn, out, sqrsum, num_splits);
  if (g.M == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t S = num_splits.value_or(1);
  if (out.is_contiguous() && sqrsum.is_contiguous()) {
    cuda::prenorm_into(x, fn, S, out, sqrsum);
    return;
  }
  const Tensor o = at::empty({S, g.M, g.N}, out.options());
  const Tensor q = at::empty({S, g.M}, sqrsum.options());
  cuda::prenorm_into(x, fn, S, o, q);
  out.copy_(o.view(out.sizes()));
  sqrsum.copy_(q.view(sqrsum.sizes()));
}

}  // namespace mhc
