"""Drop-ins for the serving stacks' mHC functions (SPEC §7.1).

* :mod:`mhc_ops.compat.sglang`: sglang 0.5.23's ``sglang.kernels.ops.layernorm.mhc`` /
  ``.mhc_head`` functions, and its DeepSeek-V4.1 path (stats, combine + norm, post + combine,
  the mega boundary without its FP8 output);
* :mod:`mhc_ops.compat.vllm`: vLLM 0.33's ``vllm.model_executor.kernels.mhc.tilelang``
  functions (V4.1's delayed pre and boundary included), and the vLLM general-plugin entry
  point ``register``;
* :mod:`mhc_ops.compat.deep_gemm`: DeepGEMM's ``tf32_hc_prenorm_gemm``.

Each module has ``install()`` / ``uninstall()``; importing them replaces nothing.
"""
