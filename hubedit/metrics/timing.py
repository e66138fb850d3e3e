"""Wall-clock timing of editing methods, seconds per model (paper Table 1)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["TimingResult", "time_per_model", "timing_table"]


@dataclass(frozen=True)
class TimingResult:
    """Summary of per-model times in seconds over ``n`` timed models."""

    median_s: float
    mean_s: float
    p90_s: float
    n: int

    @classmethod
    def from_samples(cls, seconds: Iterable[float]) -> "TimingResult":
        s = np.asarray(list(seconds), dtype=np.float64)
        if s.size == 0:
            raise ValueError("no timing samples")
        return cls(float(np.median(s)), float(s.mean()), float(np.percentile(s, 90)), int(s.size))

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _auto_sync() -> None:
    """Wait for queued CUDA work, if CUDA is in use (otherwise a no-op)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_per_model(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    warmup: int = 1,
    repeats: int = 1,
    models_per_item: int = 1,
    sync: Callable[[], None] | Literal["auto"] | None = "auto",
) -> TimingResult:
    """Time ``fn(item)`` for every item, ``repeats`` times, with :func:`time.perf_counter`.

    ``warmup`` untimed calls come first (cycling over the items). Each call's seconds are divided by
    ``models_per_item`` (for methods that edit a batch of models per call) and each call is one sample,
    so ``n = len(items) * repeats``. ``sync`` runs before starting and before stopping the clock
    (``"auto"``: ``torch.cuda.synchronize`` when CUDA is initialised; ``None``: nothing).
    """
    items = list(items)
    if not items:
        raise ValueError("time_per_model needs at least one item")
    if repeats < 1 or warmup < 0 or models_per_item < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, models_per_item >= 1; got {repeats}, {warmup}, {models_per_item}")
    sync_fn = _auto_sync if sync == "auto" else (sync or (lambda: None))
    for k in range(warmup):
        fn(items[k % len(items)])
    samples: list[float] = []
    for _ in range(repeats):
        for item in items:
            sync_fn()
            t0 = time.perf_counter()
            fn(item)
            sync_fn()
            samples.append((time.perf_counter() - t0) / models_per_item)
    return TimingResult.from_samples(samples)


def _fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f}"
    if s >= 1e-3:
        return f"{s:.4f}"
    return f"{s:.2e}"


def timing_table(results: Mapping[str, TimingResult]) -> str:
    """Markdown table (GitHub style): method, median / mean / p90 seconds per model, n, and the median
    relative to the fastest method (``1.0x`` = fastest)."""
    from tabulate import tabulate

    fastest = min((r.median_s for r in results.values()), default=0.0)
    rows = [
        [
            name,
            _fmt_seconds(r.median_s),
            _fmt_seconds(r.mean_s),
            _fmt_seconds(r.p90_s),
            r.n,
            f"{r.median_s / fastest:.1f}x" if fastest > 0 else "–",
        ]
        for name, r in results.items()
    ]
    headers = ["method", "median s/model", "mean s/model", "p90 s/model", "n", "vs fastest"]
    return tabulate(
        rows, headers=headers, tablefmt="github", disable_numparse=True,
        colalign=("left", "right", "right", "right", "right", "right"),
    )
