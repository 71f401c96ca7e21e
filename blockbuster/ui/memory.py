"""The cluster's memory over time per stage of a run on Dask, as a PNG.

The samples are :class:`distributed.diagnostics.MemorySampler`'s (process memory of every
worker together, every :data:`blockbuster.run.dask_engine.MEMORY_INTERVAL_S` seconds), taken
per task while its blocks ran and kept in the task's report (``TaskReport.memory``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from blockbuster.run.task import TaskReport

__all__ = ["has_memory", "write_memory_plot"]


def has_memory(reports: Mapping[str, TaskReport]) -> bool:
    """Whether any task of the run was sampled."""
    return any(r.memory for r in reports.values())


def write_memory_plot(reports: Mapping[str, TaskReport], path: str | Path) -> Path:
    """Draw each sampled task's memory (GiB) against seconds since the first sample.

    Parameters
    ----------
    reports
        The run's task reports, in the order the tasks ran.
    path
        The PNG to write.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sampled = {name: r.memory for name, r in reports.items() if r.memory}
    if not sampled:
        raise ValueError("reports hold no memory samples (the run was not sampled on Dask)")
    start = min(samples[0][0] for samples in sampled.values())
    fig = Figure(figsize=(8, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    peak = 0.0
    for name, samples in sampled.items():
        seconds = [t - start for t, _ in samples]
        gib = [b / 2**30 for _, b in samples]
        peak = max(peak, *gib)
        ax.plot(seconds, gib, label=f"{name} (peak {max(gib):.2f} GiB)", drawstyle="steps-post")
    ax.set_xlabel("seconds since the first stage started")
    ax.set_ylabel("cluster process memory, GiB")
    ax.set_ylim(0, peak * 1.1 or 1)
    ax.set_title("Dask workers' memory per stage (MemorySampler)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out
