"""Per-step wall times of ``run_reconciliation``, for the bench sections that time a whole run."""

from __future__ import annotations

import time
from typing import Any

STEPS = ("plan_run", "_compare_all", "check_quality", "open_run_tasks", "apply_run_corrections", "finish_run",
         "build_report")


def timed_steps() -> dict[str, float]:
    """Time each step of ``run_reconciliation`` (wall seconds, summed per step) into the returned dict."""
    from reconciler.pipeline import runner

    steps: dict[str, float] = {}
    for name in STEPS:
        original = getattr(runner, name)
        original = getattr(original, "__wrapped_step__", original)

        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                steps[_name] = steps.get(_name, 0.0) + time.perf_counter() - started
        timed.__wrapped_step__ = original  # type: ignore[attr-defined]
        setattr(runner, name, timed)
    return steps
