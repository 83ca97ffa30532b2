"""`python tests/toy_run.py [overrides]`: run.py with the test-only techniques registered (for subprocess tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's infopt
sys.path.insert(0, str(Path(__file__).resolve().parent))

from toy_techniques import register_toys  # noqa: E402

register_toys()

from infopt.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
