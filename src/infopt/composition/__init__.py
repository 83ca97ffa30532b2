"""Turning a command line into a validated config: the schemas registered with Hydra (``store``),
every override composed and checked before Hydra starts a run or a sweep (``precheck``), and the
composed config validated against the schemas, the techniques and the bench backends (``validate``).

This layer sits above ``config`` (plain schemas), the techniques and the backends, and imports them;
nothing below imports it.
"""
