// Argument checks shared by the CPU stages and the kernel launchers.
#include "core/validate.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"

namespace twl {

absl::Status ValidateGeometry(const PageGeometry& g) {
  if (g.page_size < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("page_size must be >= 1, got %d", g.page_size));
  }
  if (g.head_dim < 2 || g.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("head_dim must be even and >= 2, got %d", g.head_dim));
  }
  if (g.num_kv_heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("num_kv_heads must be >= 1, got %d", g.num_kv_heads));
  }
  if (g.k_bits != 2 && g.k_bits != 4 && g.k_bits != 8 && g.k_bits != 16) {
    return absl::InvalidArgumentError(
        absl::StrFormat("k_bits must be 2, 4, 8 or 16, got %d", g.k_bits));
  }
  if (g.k_scheme != kKSchemeToken && g.k_scheme != kKSchemePageChannel) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "k_scheme must be %d (per token) or %d (per page channel), got %d", kKSchemeToken,
        kKSchemePageChannel, g.k_scheme));
  }
  if ((int64_t(g.head_dim) * g.k_bits) % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "head_dim * k_bits must be a whole number of bytes (head_dim %d, k_bits %d)", g.head_dim,
        g.k_bits));
  }
  return absl::OkStatus();
}

absl::Status ValidateBatch(const PageGeometry& g, const BatchView& b, bool check_host_data) {
  if (b.num_seqs < 1) return absl::InvalidArgumentError("batch has no sequences");
  if (b.num_q_heads < 1 || b.num_q_heads % g.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_q_heads (%d) must be a positive multiple of num_kv_heads (%d)", b.num_q_heads,
        g.num_kv_heads));
  }
  if (b.seq_len == nullptr || b.page_table == nullptr) {
    return absl::InvalidArgumentError("batch seq_len and page_table must not be null");
  }
  if (b.max_pages < 1) return absl::InvalidArgumentError("batch max_pages must be >= 1");
  if (!check_host_data) return absl::OkStatus();
  return ValidateBatchPages(g, b, int64_t(std::numeric_limits<int32_t>::max()) + 1);
}

absl::Status ValidateBatchPages(const PageGeometry& g, const BatchView& b, int64_t num_pages) {
  if (absl::Status s = ValidateBatch(g, b, /*check_host_data=*/false); !s.ok()) return s;
  for (int32_t s = 0; s < b.num_seqs; ++s) {
    const int32_t len = b.seq_len[s];
    if (len < 1) {
      return absl::FailedPreconditionError(absl::StrFormat("sequence %d of the batch is empty", s));
    }
    if (int64_t(len) > int64_t(b.max_pages) * g.page_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "sequence %d has %d tokens, more than max_pages (%d) * page_size (%d)", s, len,
          b.max_pages, g.page_size));
    }
    const int32_t* row = b.page_table + int64_t(s) * b.max_pages;
    const int32_t n = b.NumPages(g, s);
    // Branch-free range check of the row, then the first offender for the message.
    uint32_t bad = 0;
    for (int32_t p = 0; p < n; ++p) bad |= uint32_t(int64_t(row[p]) >= num_pages || row[p] < 0);
    if (bad) {
      for (int32_t p = 0; p < n; ++p) {
        if (row[p] < 0 || int64_t(row[p]) >= num_pages) {
          return absl::InvalidArgumentError(absl::StrFormat(
              "sequence %d page %d has invalid page id %d (valid: [0, %d))", s, p, row[p],
              num_pages));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSelectStride(const SelectorParams& params, const BatchView& b,
                                  const SelectionView& out) {
  if (out.max_select < SelectStride(params, b.max_pages)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "select: max_select %d is below the stride %d the selector needs", out.max_select,
        SelectStride(params, b.max_pages)));
  }
  return absl::OkStatus();
}

absl::Status ValidateSelect(const SelectorParams& params, const BatchView& b, const QueryView& q,
                            const QuantKView& qk, const SelectionView& out) {
  if (!q.q || !out.pages || !out.count) {
    return absl::InvalidArgumentError("select: q and outputs must not be null");
  }
  const bool quest = params.kind == SelectorKind::kQuest;
  const bool grow = quest && params.grow;
  if (quest && ((!grow && params.budget_pages < 1) || params.budget_pages < 0 ||
                params.sink_pages < 0)) {
    return absl::InvalidArgumentError(
        "select: Quest needs budget_pages >= 1 (>= 0 when growing) and sink_pages >= 0");
  }
  if (grow && (!out.bound || !out.limit)) {
    return absl::InvalidArgumentError("select: growing Quest needs the bound and limit outputs");
  }
  if (quest && (!qk.kmin || !qk.kmax)) {
    return absl::InvalidArgumentError("select: Quest needs the page min/max metadata");
  }
  return ValidateSelectStride(params, b, out);
}

absl::Status ValidateP(float p) {
  if (!(p > 0.0f && p <= 1.0f)) {  // also rejects NaN
    return absl::InvalidArgumentError(absl::StrFormat("top-p must be in (0, 1], got %.9g", p));
  }
  return absl::OkStatus();
}

}  // namespace twl
