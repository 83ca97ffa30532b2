"""Studies across runs: layer sensitivity, sweep bookkeeping (skip finished jobs), objectives."""
