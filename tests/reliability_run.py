"""`python tests/reliability_run.py [overrides]`: run.py plus the test-only toy_finetune technique."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's infopt
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_toys import register  # noqa: E402

register()

from infopt.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
