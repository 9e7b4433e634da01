// The selector registry: one line per selector folder under pipeline/select/.
#include "absl/strings/str_format.h"
#include "pipeline/select/double_sparsity/ds_selector.h"
#include "pipeline/select/full/full_selector.h"
#include "pipeline/select/quest/quest_selector.h"
#include "pipeline/select/selector.h"

namespace twl {

absl::StatusOr<const Selector*> FindSelector(SelectorKind kind) {
  switch (kind) {
    case SelectorKind::kFull: return &FullSelector();
    case SelectorKind::kQuest: return &QuestSelector();
    case SelectorKind::kDoubleSparsity: return &DoubleSparsitySelector();
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("no selector registered for kind %d", int32_t(kind)));
}

}  // namespace twl
