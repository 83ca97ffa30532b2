"""One experiment: `python run.py technique=quantize technique.bits=4`. See README.md."""

import sys
from pathlib import Path

# This checkout's sources win over any installed copy (worktrees, editable installs elsewhere).
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from infopt.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
