#include "core/overlap.h"

#include <algorithm>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/checks.h"

namespace mhc {

namespace {

// A tensor's bytes as [begin, end) runs relative to its storage: one run per element, or one
// per stretch of a unit-stride innermost dimension. Only built when the cheap tests below cannot
// decide, so the common cases cost a few comparisons.

using Runs = std::vector<std::pair<int64_t, int64_t>>;

struct Layout {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride in elements), size > 1
  int64_t offset, item;                           // storage offset (elements), element bytes
};

// Sizes and strides are concrete (not symbols of a dynamic-shape trace) and there is a storage
// to compare; otherwise overlap cannot be decided here and the real kernel decides at run time.
bool overlap_decidable(const at::Tensor& t) {
  const auto* impl = t.unsafeGetTensorImpl();
  return t.defined() && !impl->has_symbolic_sizes_strides() && impl->unsafe_storage() &&
         t.numel() > 0;
}

// Dimensions of size > 1 sorted by stride, innermost first, with the dims that tile each other
// (stride == inner size * inner stride) merged.
Layout layout_of(const at::Tensor& t) {
  Layout l{{}, t.storage_offset(), static_cast<int64_t>(t.element_size())};
  for (int64_t i = 0; i < t.dim(); ++i)
    if (t.size(i) > 1) l.dims.emplace_back(t.size(i), t.stride(i));
  std::sort(l.dims.begin(), l.dims.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });
  std::vector<std::pair<int64_t, int64_t>> merged;
  for (const auto& d : l.dims) {
    if (!merged.empty() && merged.back().second != 0 &&
        d.second == merged.back().first * merged.back().second)
      merged.back().first *= d.first;
    else
      merged.push_back(d);
  }
  l.dims = std::move(merged);
  return l;
}

// [first byte, one past the last byte] of the tensor in its storage (strides are >= 0).
std::pair<int64_t, int64_t> extent(const Layout& l) {
  int64_t last = l.offset;
  for (const auto& d : l.dims) last += (d.first - 1) * d.second;
  return {l.offset * l.item, (last + 1) * l.item};
}

// Above this many runs the exact test is not attempted and overlap is assumed.
constexpr int64_t kMaxRuns = int64_t{1} << 22;

// The bytes of the tensor as [begin, end) runs sorted by begin; empty when there would be more
// than kMaxRuns. Stride-0 dimensions add no bytes and are skipped.
Runs runs(const Layout& l) {
  std::vector<std::pair<int64_t, int64_t>> dims;
  for (const auto& d : l.dims)
    if (d.second != 0) dims.push_back(d);
  const bool unit = !dims.empty() && dims.front().second == 1;
  const int64_t run = (unit ? dims.front().first : 1) * l.item;
  const size_t outer0 = unit ? 1 : 0;
  int64_t count = 1;
  for (size_t i = outer0; i < dims.size(); ++i) {
    if (dims[i].first > kMaxRuns / count) return {};
    count *= dims[i].first;
  }
  Runs r;
  r.reserve(static_cast<size_t>(count));
  std::vector<int64_t> idx(dims.size(), 0);
  for (int64_t c = 0; c < count; ++c) {
    int64_t e = l.offset;
    for (size_t i = outer0; i < dims.size(); ++i) e += idx[i] * dims[i].second;
    r.emplace_back(e * l.item, e * l.item + run);
    for (size_t i = outer0; i < dims.size() && ++idx[i] == dims[i].first; ++i) idx[i] = 0;
  }
  std::sort(r.begin(), r.end());
  return r;
}

bool runs_overlap(const Runs& r) {
  for (size_t i = 1; i < r.size(); ++i)
    if (r[i].first < r[i - 1].second) return true;
  return false;
}

// Whether two elements of t share memory (a stride-0 dimension, or an as_strided view whose
// dimensions interleave).
bool overlaps_itself(const at::Tensor& t) {
  if (!overlap_decidable(t) || t.unsafeGetTensorImpl()->is_non_overlapping_and_dense())
    return false;
  const Layout l = layout_of(t);
  // Sorted by stride, each dimension stepping past everything inside it: no two elements meet.
  int64_t span = 1;
  bool nested = true;
  for (const auto& d : l.dims) {
    if (d.second == 0) return true;
    nested = nested && d.second >= span;
    span += (d.first - 1) * d.second;
  }
  if (nested) return false;
  const auto r = runs(l);
  return r.empty() || runs_overlap(r);
}

// Merges runs that touch or overlap, so that the result is disjoint and sorted.
Runs disjoint_union(Runs r) {
  size_t w = 0;
  for (size_t i = 1; i < r.size(); ++i) {
    if (r[i].first <= r[w].second)
      r[w].second = std::max(r[w].second, r[i].second);
    else
      r[++w] = r[i];
  }
  r.resize(r.empty() ? 0 : w + 1);
  return r;
}

// Whether a and b share a byte of memory.
bool overlap(const at::Tensor& a, const at::Tensor& b) {
  if (!overlap_decidable(a) || !overlap_decidable(b)) return false;
  if (!a.unsafeGetTensorImpl()->unsafe_storage().is_alias_of(
          b.unsafeGetTensorImpl()->unsafe_storage()))
    return false;
  const Layout la = layout_of(a), lb = layout_of(b);
  const auto ea = extent(la), eb = extent(lb);
  if (ea.second <= eb.first || eb.second <= ea.first) return false;
  const auto ra = disjoint_union(runs(la)), rb = disjoint_union(runs(lb));
  if (ra.empty() || rb.empty()) return true;
  for (size_t i = 0, j = 0; i < ra.size() && j < rb.size();) {
    if (ra[i].second <= rb[j].first)
      ++i;
    else if (rb[j].second <= ra[i].first)
      ++j;
    else
      return true;
  }
  return false;
}

std::string layout_str(const at::Tensor& t) {
  std::ostringstream s;
  s << describe(t) << " with strides " << t.strides() << " at storage offset "
    << t.storage_offset();
  return s.str();
}

}  // namespace

void check_no_self_overlap(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK(!overlaps_itself(t), op, ": ", arg,
              " must not overlap itself (no two elements at one address, as for an out= "
              "argument); got ",
              layout_str(t));
}

void check_no_overlap(const char* op, const char* arg, const at::Tensor& t,
                      const char* other_arg, const at::Tensor& other) {
  TORCH_CHECK(!overlap(t, other), op, ": ", arg, " must not overlap ", other_arg,
              " in memory; got ", arg, " ", layout_str(t), " and ", other_arg, " ",
              layout_str(other), " in one storage");
}


}  // namespace mhc
