"""Drop-ins for the serving stacks' mHC functions (SPEC §7.1).

* :mod:`mhc_ops.compat.sglang`: sglang 0.5.23's ``sglang.kernels.ops.layernorm.mhc`` /
  ``.mhc_head`` functions;
* :mod:`mhc_ops.compat.vllm`: vLLM 0.33's ``vllm.model_executor.kernels.mhc.tilelang``
  functions, and the vLLM general-plugin entry point ``register``;
* :mod:`mhc_ops.compat.deep_gemm`: DeepGEMM's ``tf32_hc_prenorm_gemm``.

Each module has ``install()`` / ``uninstall()``; importing them replaces nothing.
"""
