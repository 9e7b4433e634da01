// Test support: creating a twl::Runtime in a test (the failure is reported, not fatal).
#pragma once

#include <memory>

#include "gtest/gtest.h"
#include "runtime/runtime.h"

namespace twl::testing {

inline std::unique_ptr<Runtime> MakeRuntime(const RuntimeConfig& c) {
  auto rt = Runtime::Create(c);
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? std::move(*rt) : nullptr;
}

}  // namespace twl::testing
