"""Pictures: score vs length per category, and needle depth x length heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prolong.eval.tasks import TASKS


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_score_vs_length(summary: dict[str, Any], path: Path) -> Path:
    """One line per complete category, or per task when no category is complete."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by = "category" if summary["categories"] else "task"  # tasks when no category is complete
    series = summary["categories"] or summary["tasks"]
    for name, scores in series.items():
        xs = sorted(scores)
        ax.plot(xs, [scores[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(summary["lengths"], [f"{n // 1024}K" if n >= 1024 else str(n) for n in summary["lengths"]])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("score (x100)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"score vs length by {by}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def depth_grid(results: list[dict[str, Any]], task: str, bins: int = 10) -> tuple[list[int], list[list[float]]]:
    """(lengths, grid[depth bin][length index]) of mean main-metric scores x100 (NaN where empty)."""
    rows = [r for r in results if r["task"] == task]
    lengths = sorted({r["length"] for r in rows})
    sums = [[0.0] * len(lengths) for _ in range(bins)]
    counts = [[0] * len(lengths) for _ in range(bins)]
    metric = TASKS[task].main_metric
    for result in rows:
        column = lengths.index(result["length"])
        for row in result["rows"]:
            depth = row.get("meta", {}).get("depth")
            if depth is None:
                continue
            b = min(int(depth * bins), bins - 1)
            sums[b][column] += 100 * row["metrics"].get(metric, 0.0)
            counts[b][column] += 1
    grid = [[s / c if c else float("nan") for s, c in zip(srow, crow, strict=True)] for srow, crow in zip(sums, counts, strict=True)]
    return lengths, grid


def plot_depth_heatmap(results: list[dict[str, Any]], task: str, path: Path, bins: int = 10) -> Path:
    """Needle depth (rows, 0% top) x context length (columns) heatmap of one task."""
    plt = _pyplot()
    lengths, grid = depth_grid(results, task, bins)
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3, 5))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="lightgray")  # gray: depth bins without examples
    image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.set_yticks(range(bins), [f"{100 * i // bins}%" for i in range(bins)])
    ax.set_xlabel("context length")
    ax.set_ylabel("needle depth")
    ax.set_title(f"{task}: score by depth and length")
    fig.colorbar(image, ax=ax, label="score (x100)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
