"""Plots of evaluation reports and refinement benchmarks (matplotlib, headless ``Agg`` backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_basins", "plot_report"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Recall-vs-threshold curves (MSSD, MSPD, VSD where present) of a ``meshpose eval`` report.

    Returns:
        The written PNG paths.
    """
    from meshpose.eval.metrics import BOP_MSPD_THRESHOLDS, BOP_MSSD_THRESHOLDS, BOP_VSD_THRESHOLDS

    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    curves = (
        ("recall_mssd", BOP_MSSD_THRESHOLDS, "MSSD threshold (× diameter)"),
        ("recall_mspd", BOP_MSPD_THRESHOLDS, "MSPD threshold (px at 640 wide)"),
        ("recall_vsd", BOP_VSD_THRESHOLDS, "VSD threshold (mean over τ)"),
    )
    for key, ths, xlabel in curves:
        if key not in report["overall"]:
            continue
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(ths, report["overall"][key], "k-o", lw=2, label="all")
        for obj_id, rec in report["per_object"].items():
            if key in rec:
                ax.plot(ths, rec[key], "-", alpha=0.6, label=f"obj {obj_id}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("recall")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_basins(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    out_path: str | Path,
    *,
    x_key: str,
    xlabel: str,
    title: str,
) -> Path:
    """A basin-of-attraction plot: success rate versus an initial-error measure, one line per method.

    Args:
        curves: ``{method: {x_key: [...], "success": [...], "count": [...]}}``.
        out_path: PNG to write.
        x_key: the key of the x values in each curve.
        xlabel: x axis label.
        title: plot title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, c in curves.items():
        x = np.asarray(c[x_key], dtype=float)
        y = np.asarray(c["success"], dtype=float)
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], "-o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("success rate (ADD(-S) < 0.1 d)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
