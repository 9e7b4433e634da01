#include "pipeline/select/quest/quest_selector.h"

#include "pipeline/select/launcher_selector.h"

namespace twl {
namespace {

class Quest final : public LauncherSelector {
 public:
  SelectorKind kind() const override { return SelectorKind::kQuest; }
  const char* name() const override { return "quest"; }
  int64_t MetadataBytesPerBlock(const PageGeometry& g) const override {
    return QuestMetadataBytesPerBlock(g);
  }
};

}  // namespace

const Selector& QuestSelector() {
  static const Quest quest;
  return quest;
}

}  // namespace twl
