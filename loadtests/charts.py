"""PNG charts of a load test (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .latency import percentile  # noqa: E402
from .records import Record  # noqa: E402


def _bins(records: list[Record], duration_s: float) -> list[tuple[float, list[Record]]]:
    width = max(duration_s / 20, 2.0)
    bins: dict[int, list[Record]] = {}
    for r in records:
        bins.setdefault(int(r.elapsed // width), []).append(r)
    return [((i + 0.5) * width, rs) for i, rs in sorted(bins.items())]


def latency_over_time(path: Path, records: list[Record], summary: dict, users: list[tuple[float, int]], t0: float) -> None:
    tenants = summary["tenants"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name, info in tenants.items():
        mine = [r for r in records if r.tenant == name and r.ok]
        points = _bins(mine, summary["duration_s"])
        xs = [x for x, _ in points]
        for p, style in ((50, ":"), (95, "-")):
            axes[0].plot(xs, [percentile([r.ttft_s * 1e3 for r in rs], p) for _, rs in points], style, label=f"{name} p{p}")
            tp = [[r.tpot_s * 1e3 for r in rs if r.tpot_s is not None] for _, rs in points]
            axes[1].plot(xs, [percentile(v, p) for v in tp], style, label=f"{name} p{p}")
        axes[0].axhline(info["slo"]["ttft_p95_ms"], color="red", lw=0.8, ls="--")
        axes[1].axhline(info["slo"]["tpot_p95_ms"], color="red", lw=0.8, ls="--")
    axes[0].set_ylabel("TTFT ms")
    axes[1].set_ylabel("TPOT ms")
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    if users:
        axes[2].step([t - t0 for t, _ in users], [u for _, u in users], where="post", label="users (Locust)")
    for start, end in _target_windows(summary):
        for ax in axes:
            ax.axvspan(start, end, color="green", alpha=0.06)
    axes[2].set_ylabel("users")
    axes[2].set_xlabel("seconds since start (green: target load)")
    axes[0].set_title("latency percentiles over time (red: SLO)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _target_windows(summary: dict) -> list[tuple[float, float]]:
    windows, start = [], 0.0
    for s in summary["stages"]:
        if s["label"] == "target":
            windows.append((start, s["until_s"]))
        start = s["until_s"]
    return windows


def attainment(path: Path, summary: dict) -> None:
    names = list(summary["tenants"])
    values = [(summary["tenants"][n]["slo"]["attainment"] or 0) * 100 for n in names]
    colors = ["tab:green" if summary["tenants"][n]["slo"]["met"] else "tab:red" for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.5))
    ax.bar(names, values, color=colors)
    ax.axhline(95, color="black", lw=0.8, ls="--")
    ax.set_ylim(0, 105)
    ax.set_ylabel("% requests meeting TTFT and TPOT SLO")
    ax.set_title("SLO attainment at the target load (green: p95 SLOs met)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def predicted_vs_measured(path: Path, summary: dict) -> None:
    names = list(summary["tenants"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = (
        ("TTFT p95 ms", lambda t: t["predicted"]["ttft_p95_ms"], lambda t: t["at_target"]["ttft_ms"]["p95"]),
        ("TPOT mean ms", lambda t: t["predicted"]["tpot_ms"], lambda t: t["at_target"]["tpot_ms"]["mean"]),
    )
    for ax, (title, predicted, measured) in zip(axes, panels):
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [predicted(summary["tenants"][n]) or 0 for n in names], 0.4, label="predicted")
        ax.bar([x + 0.2 for x in xs], [measured(summary["tenants"][n]) or 0 for n in names], 0.4, label="measured")
        ax.set_xticks(list(xs), names)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def replicas_vs_load(path: Path, series: dict, users: list[tuple[float, int]], t0: float) -> None:
    panels = [name for name in ("replicas", "requests_running", "requests_waiting", "kv_cache_usage") if series.get(name)]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(9, 2.2 * (len(panels) + 1)), sharex=True)
    axes[0].step([t - t0 for t, _ in users], [u for _, u in users], where="post")
    axes[0].set_ylabel("users")
    for ax, name in zip(axes[1:], panels):
        for s in series[name]:
            ax.plot([t - t0 for t, _ in s.points], [v for _, v in s.points], label=s.label())
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("seconds since start")
    axes[0].set_title("replicas and engine state against load (Prometheus)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
