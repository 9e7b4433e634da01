#include "core/env_knob.h"

#include <cstdlib>

#include <gtest/gtest.h>

namespace twl {
namespace {

constexpr const char* kName = "TWL_ENV_KNOB_TEST";

// Sets kName for one test and unsets it after, however the test ends.
struct ScopedEnv {
  explicit ScopedEnv(const char* value) { setenv(kName, value, 1); }
  ~ScopedEnv() { unsetenv(kName); }
};

TEST(EnvInt, UnsetIsNothing) {
  unsetenv(kName);
  EXPECT_FALSE(EnvInt(kName, 0, 10).has_value());
}

TEST(EnvInt, TakesWholeIntegersInRangeOnly) {
  struct Case {
    const char* text;
    std::optional<int64_t> want;
  };
  const Case cases[] = {
      {"7", 7},
      {"0", 0},
      {"10", 10},
      {" 4", 4},
      {"-1", std::nullopt},
      {"11", std::nullopt},
      {"3x", std::nullopt},
      {"x3", std::nullopt},
      {"", std::nullopt},
      {"99999999999999999999", std::nullopt},
  };
  for (const Case& c : cases) {
    ScopedEnv env(c.text);
    EXPECT_EQ(EnvInt(kName, 0, 10), c.want) << "'" << c.text << "'";
  }
}

TEST(EnvSwitchOn, OffOnlyForZero) {
  unsetenv(kName);
  EXPECT_TRUE(EnvSwitchOn(kName));
  for (const char* on : {"1", "", "00", "no"}) {
    ScopedEnv env(on);
    EXPECT_TRUE(EnvSwitchOn(kName)) << "'" << on << "'";
  }
  ScopedEnv off("0");
  EXPECT_FALSE(EnvSwitchOn(kName));
}

}  // namespace
}  // namespace twl
