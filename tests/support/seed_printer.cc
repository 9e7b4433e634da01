// Prints gtest's random seed before the tests (once: with --gtest_repeat gtest sets the
// environments up once, and with --gtest_shuffle its "Randomizing tests' orders with a seed
// of N" line names each iteration's seed). Seeded tests derive their
// inputs from it (UnitTest::random_seed()), and gtest takes it from the clock unless
// --gtest_random_seed is given, without saying which it took: a failure at a rare input (a
// top-p near-tie) could not be replayed. Linked into every test binary with the support code.
#include <cstdio>

#include <gtest/gtest.h>

namespace twl::testing {
namespace {

class SeedPrinter : public ::testing::Environment {
 public:
  void SetUp() override {
    std::printf("[ seed     ] inputs from --gtest_random_seed=%d\n",
                ::testing::UnitTest::GetInstance()->random_seed());
    std::fflush(stdout);
  }
};

// gtest owns and deletes the environment.
[[maybe_unused]] ::testing::Environment* const kSeedPrinter =
    ::testing::AddGlobalTestEnvironment(new SeedPrinter);

}  // namespace
}  // namespace twl::testing
