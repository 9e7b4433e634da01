"""ctest entry point: runs pytest on python/tests, or exits 77 (ctest's SKIP_RETURN_CODE for
this test) saying what is missing, so a machine without Debian's python3-pytest/python3-numpy
shows the tests as skipped rather than passed."""
import sys

missing = []
for mod in ("pytest", "numpy"):
    try:
        __import__(mod)
    except ImportError:
        missing.append(mod)
if missing:
    print(f"SKIPPED: python3 lacks {', '.join(missing)} (scripts/setup.sh installs "
          "python3-pytest python3-numpy)")
    sys.exit(77)

import pytest  # noqa: E402

sys.exit(pytest.main(sys.argv[1:]))
