// The Double Sparsity selector: its metadata hooks and the two select paths.
#include "pipeline/select/double_sparsity/ds_selector.h"

#include <vector>

#include "pipeline/select/double_sparsity/ds_kernels.h"
#include "runtime/cuda/append_launch.h"

namespace twl {
namespace {

class DoubleSparsity final : public Selector {
 public:
  SelectorKind kind() const override { return SelectorKind::kDoubleSparsity; }
  const char* name() const override { return "double-sparsity"; }
  // What it reads: its own channel sums, and the quantized K with its ranges.
  int64_t MetadataBytesPerBlock(const PageGeometry& g) const override {
    return DsMetadataBytesPerBlock(g);
  }
  int64_t OwnMetadataBytesPerBlock(const PageGeometry& g) const override {
    return DsMetadataBytesPerBlock(g);
  }
  absl::Status CheckGeometry(const PageGeometry& g) const override {
    if (g.k_bits >= 16) {
      return absl::InvalidArgumentError(
          "the double sparsity selector scores from the quantized K copy: k_bits must be < 16");
    }
    return absl::OkStatus();
  }
  absl::Status UpdateMetadataOnHost(const PageGeometry& g, const AppendView& in,
                                    const FpKvView& kv, const QuantKView& qk) const override {
    if (!qk.meta || qk.meta_bytes < DsMetadataBytesPerBlock(g)) {
      return absl::InvalidArgumentError("double sparsity: no metadata store");
    }
    std::vector<int32_t> pages, rows;
    PlanAppendPages(in.page_id, in.slot, in.num_tokens, &pages, &rows);
    DsUpdateBlocksRef(g, pages.data(), rows.data(), int32_t(pages.size()), kv, qk);
    return absl::OkStatus();
  }
  absl::Status UpdateMetadataOnDevice(const PageGeometry& g, const AppendPagePlan& plan,
                                      const FpKvView& kv, const QuantKView& qk,
                                      void* stream) const override {
    return LaunchDsUpdateBlocks(g, plan, kv, qk, stream);
  }
  absl::Status AppendSegmentsMetadataOnDevice(const PageGeometry& g,
                                              const AppendSegment* d_segments,
                                              int32_t num_segments, const FpKvView& kv,
                                              const fp16_t* stage, const QuantKView& qk,
                                              void* stream) const override {
    return LaunchDsAppendSegments(g, d_segments, num_segments, kv, stage, qk, stream);
  }
  size_t DeviceWorkspaceBytes(const PageGeometry& g, const SelectorParams&, int32_t num_seqs,
                              int32_t max_pages) const override {
    return DsSelectWorkspaceBytes(g, num_seqs, max_pages);
  }
  absl::Status SelectOnDevice(const PageGeometry& g, const SelectorParams& params,
                              const BatchView& batch, const QueryView& q, const QuantKView& qk,
                              const SelectionView& out, void* workspace,
                              size_t workspace_bytes, void* stream,
                              float /*softmax_scale: a positive scale keeps the ranking*/)
      const override {
    return LaunchDsSelect(g, params, batch, q, qk, out, workspace, workspace_bytes, stream);
  }
  absl::Status SelectOnHost(const PageGeometry& g, const SelectorParams& params,
                            const BatchView& batch, const QueryView& q, const QuantKView& qk,
                            const SelectionView& out, float /*softmax_scale*/) const override {
    return DsSelectRef(g, params, batch, q, qk, out);
  }
};

}  // namespace

const Selector& DoubleSparsitySelector() {
  static const DoubleSparsity ds;
  return ds;
}

}  // namespace twl
