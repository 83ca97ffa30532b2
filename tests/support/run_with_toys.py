"""`python tests/support/run_with_toys.py [overrides]`: run.py with the test-only techniques registered (subprocess tests)."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent / "src"))  # this checkout's infopt
sys.path.insert(0, str(TESTS))  # the support package

from support.toys import register_toys  # noqa: E402

register_toys()

from infopt.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
