#include "pipeline/select/full/full_selector.h"

#include "pipeline/select/launcher_selector.h"

namespace twl {
namespace {

class Full final : public LauncherSelector {
 public:
  SelectorKind kind() const override { return SelectorKind::kFull; }
  const char* name() const override { return "full"; }
  int64_t MetadataBytesPerBlock(const PageGeometry&) const override { return 0; }
};

}  // namespace

const Selector& FullSelector() {
  static const Full full;
  return full;
}

}  // namespace twl
