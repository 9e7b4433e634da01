// bench/lib/disk_probe: the reference read rates of the disk tier benchmark come back
// positive for a small file, bad arguments are refused, and /proc/self/io is parsed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "lib/disk_probe.h"

namespace twl::bench {
namespace {

std::string TmpDir() {
  const char* tmp = std::getenv("TMPDIR");
  return tmp && *tmp ? tmp : "/tmp";
}

TEST(DiskProbe, MeasuresSequentialAndRandomReads) {
  absl::StatusOr<DiskRates> r = ProbeDiskReadRates(TmpDir(), 8, 8, 2.0);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->seq_mib_s, 0);
  EXPECT_GT(r->rand8k_mib_s, 0);
  EXPECT_FALSE(r->engine.empty());
}

TEST(DiskProbe, RefusesBadArguments) {
  EXPECT_TRUE(absl::IsInvalidArgument(ProbeDiskReadRates(TmpDir(), 0, 8, 1.0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ProbeDiskReadRates(TmpDir(), 8, 0, 1.0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ProbeDiskReadRates(TmpDir(), 8, 8, 0.0).status()));
  EXPECT_FALSE(ProbeDiskReadRates("/nonexistent/twl-probe", 8, 8, 1.0).ok());
}

TEST(DiskProbe, ProcessReadBytesIsACounter) {
  const int64_t a = ProcessDiskReadBytes();
  const int64_t b = ProcessDiskReadBytes();
  EXPECT_GE(a, -1);
  if (a >= 0) {
    EXPECT_GE(b, a);
  }
}

}  // namespace
}  // namespace twl::bench
