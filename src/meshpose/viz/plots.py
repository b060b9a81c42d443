"""Plots of evaluation reports and refinement benchmarks (matplotlib, headless ``Agg`` backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_basins", "plot_report", "plot_training_log"]


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


def plot_training_log(log_path: str | Path, out_path: str | Path, *, title: str = "") -> Path:
    """The curves of a ``meshpose train`` log (``train_log.jsonl``): losses and validation ADD(-S) recall.

    Left: the total, flow and pose losses per logged step (smoothed over 10 log lines). Right: the share of
    training items within 0.1·d before and after the network, and the validation ADD(-S) recall of the
    refiner with its initial poses' recall.

    Args:
        log_path: the JSON-lines log.
        out_path: PNG to write.
        title: figure title.
    """
    import json

    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r and "step" in r]
    val = [r for r in rows if r.get("event") == "val"]
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))

    def smooth(y: np.ndarray, k: int = 10) -> np.ndarray:
        if len(y) < k:
            return y
        c = np.cumsum(np.insert(y, 0, 0.0))
        head = c[1:k] / np.arange(1, k)
        return np.concatenate([head, (c[k:] - c[:-k]) / k])

    steps = np.array([r["step"] for r in train], dtype=float)
    for key in ("loss", "flow", "pose"):
        if train and key in train[0]:
            a.plot(steps, smooth(np.array([r[key] for r in train], dtype=float)), label=key)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_title("training losses", fontsize=10)
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    if train and "ok_last" in train[0]:
        b.plot(steps, smooth(np.array([r["ok_init"] for r in train], dtype=float)), color="0.6", label="train: init")
        b.plot(steps, smooth(np.array([r["ok_last"] for r in train], dtype=float)), label="train: refined")
    if val:
        vs = [r["step"] for r in val]
        b.plot(vs, [r["init_recall"] for r in val], "--o", color="0.4", label="val: init")
        b.plot(vs, [r["add_recall"] for r in val], "-o", label="val: refined")
    b.set_ylim(0, 1.02)
    b.set_xlabel("step")
    b.set_title("ADD(-S) < 0.1 d", fontsize=10)
    b.grid(alpha=0.3)
    b.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
