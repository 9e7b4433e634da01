// C API attention adapter for the real-model accuracy runs (see capi_attention.h).
#include "lib/capi_attention.h"

#include "absl/strings/str_format.h"

namespace twl::bench {
namespace {

absl::Status FromC(twl_status s, const twl_runtime* rt, const char* what) {
  if (s == TWL_OK) return absl::OkStatus();
  return absl::InternalError(
      absl::StrFormat("%s: %s (%s)", what, twl_status_string(s), twl_runtime_last_error(rt)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CApiAttention>> CApiAttention::Create(
    const LlamaConfig& model, const CApiAttentionOptions& o) {
  std::unique_ptr<CApiAttention> a(new CApiAttention());
  a->model_ = model;
  a->opt_ = o;
  twl_runtime_config c = twl_runtime_config_default();
  c.num_layers = model.n_layers;
  c.num_q_heads = model.n_heads;
  c.num_kv_heads = model.n_kv_heads;
  c.head_dim = model.head_dim();
  c.page_size = o.page_size;
  c.k_bits = o.k_bits;
  c.k_scheme = o.k_scheme;
  c.top_p = o.p;
  c.selector = o.selector;
  c.selector_budget_tokens = o.budget_tokens;
  c.selector_budget_fraction = o.budget_fraction;
  c.dense_layers = o.dense_layers;
  c.backend = TWL_BACKEND_CPU;  // the harness measures accuracy, not speed
  c.host_pool_bytes =
      int64_t(model.n_layers) * model.seq_len * model.kv_dim() * 2 * 2 * 2 + (int64_t(1) << 20);
  if (absl::Status s = FromC(twl_runtime_create(&c, &a->rt_), nullptr, "twl_runtime_create");
      !s.ok())
    return s;
  if (absl::Status s = FromC(twl_sequence_create(a->rt_, &a->seq_), a->rt_, "twl_sequence_create");
      !s.ok())
    return s;
  return a;
}

CApiAttention::~CApiAttention() {
  if (rt_ != nullptr && seq_ != TWL_INVALID_SEQ_ID) twl_sequence_free(rt_, seq_);
  twl_runtime_free(rt_);
}

absl::Status CApiAttention::operator()(int32_t layer, int32_t pos, const float* q, const float* k,
                                       const float* v, float* out) {
  const int32_t kvd = model_.kv_dim(), dim = model_.dim;
  std::vector<uint16_t> k16(kvd), v16(kvd), q16(dim), o16(dim);
  twl_fp32_to_fp16(k, k16.data(), size_t(kvd));
  twl_fp32_to_fp16(v, v16.data(), size_t(kvd));
  twl_fp32_to_fp16(q, q16.data(), size_t(dim));
  if (absl::Status s = FromC(twl_sequence_append(rt_, seq_, layer, 1, k16.data(), v16.data(),
                                                 TWL_DTYPE_FP16, TWL_MEMORY_HOST),
                             rt_, "twl_sequence_append");
      !s.ok())
    return s;
  int32_t len = 0;
  if (absl::Status s = FromC(twl_sequence_length(rt_, seq_, layer, &len), rt_, "length"); !s.ok())
    return s;
  if (len != pos + 1)
    return absl::FailedPreconditionError(
        absl::StrFormat("layer %d holds %d tokens at position %d", layer, len, pos));
  // Short contexts are decoded densely when asked (sparse attention pays only when long).
  const float p = len < opt_.dense_below ? 1.0f : opt_.p;
  if (absl::Status s = FromC(
          twl_decode(rt_, layer, &seq_, 1, q16.data(), o16.data(), TWL_MEMORY_HOST, &p, nullptr),
          rt_, "twl_decode");
      !s.ok())
    return s;
  twl_fp16_to_fp32(o16.data(), out, size_t(dim));
  std::vector<int32_t> kept(size_t(model_.n_heads)), kept_kv(size_t(model_.n_kv_heads));
  if (absl::Status s = FromC(twl_runtime_last_step_heads(rt_, nullptr, kept.data(), nullptr,
                                                         model_.n_heads, kept_kv.data(),
                                                         model_.n_kv_heads),
                             rt_, "twl_runtime_last_step_heads");
      !s.ok())
    return s;
  for (int32_t x : kept_kv) read_.Add(len, x, layer);
  for (int32_t x : kept) {
    kept_.push_back(x);
    context_.push_back(len);
    layer_of_.push_back(layer);
  }
  return absl::OkStatus();
}

}  // namespace twl::bench
