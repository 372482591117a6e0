// Environment flags the C++ launchers read at every call (SPEC §5). The Python registry
// (mhc_ops.envs) owns the documentation and the typo guard; these helpers parse the same
// spellings so that a flag set from Python or from the shell means the same thing here.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>

namespace mhc {

// Lower-cased value of `name` without surrounding whitespace; "" when unset.
inline std::string env_value(const char* name) {
  const char* raw = std::getenv(name);
  if (raw == nullptr) return {};
  std::string v(raw);
  const auto not_space = [](unsigned char ch) { return !std::isspace(ch); };
  v.erase(v.begin(), std::find_if(v.begin(), v.end(), not_space));
  v.erase(std::find_if(v.rbegin(), v.rend(), not_space).base(), v.end());
  std::transform(v.begin(), v.end(), v.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return v;
}

// MHC_BATCH_INVARIANT: 1 / true / yes / on (any case) enable it; anything else leaves it off.
inline bool batch_invariant_enabled() {
  const std::string v = env_value("MHC_BATCH_INVARIANT");
  return v == "1" || v == "true" || v == "yes" || v == "on";
}

// MHC_BF16_FP32_GEMM_ALGO: "cublas" (default) or "fp32". Returns true for fp32; an invalid
// value warns once and falls back to cublas, as the Python registry does.
inline bool bf16_fp32_gemm_is_fp32() {
  const std::string v = env_value("MHC_BF16_FP32_GEMM_ALGO");
  if (v.empty() || v == "cublas") return false;
  if (v == "fp32") return true;
  TORCH_WARN_ONCE("MHC_BF16_FP32_GEMM_ALGO=", v,
                  " is not one of ['cublas', 'fp32']; using cublas");
  return false;
}

}  // namespace mhc
