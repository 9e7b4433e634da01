// Full: every page is a candidate (Twilight's pruner alone). Needs no metadata; the select
// launcher lists the pages (it serves Quest and Full, testing params.kind).
#pragma once

#include "pipeline/select/selector.h"

namespace twl {

const Selector& FullSelector();

}  // namespace twl
