"""The report directory: summary.json, PNG charts and index.html."""

from __future__ import annotations

import html
import json
from pathlib import Path

from . import charts
from .records import Record


def write_report(
    out: Path, summary: dict, records: list[Record], users: list[tuple[float, int]], series: dict, t0: float
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    pngs = [out / "latency_over_time.png", out / "slo_attainment.png", out / "predicted_vs_measured.png"]
    charts.latency_over_time(pngs[0], records, summary, users, t0)
    charts.attainment(pngs[1], summary)
    charts.predicted_vs_measured(pngs[2], summary)
    if any(series.values()):
        pngs.append(out / "replicas_vs_load.png")
        charts.replicas_vs_load(pngs[-1], series, users, t0)
    (out / "index.html").write_text(render_html(summary, [p.name for p in pngs]))
    return [out / "summary.json", out / "index.html", *pngs]


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: dict, images: list[str]) -> str:
    verdict = "PASS: every tenant meets its SLO at the target load" if summary["passed"] else "FAIL"
    tenants = [
        [
            name,
            t["at_target"]["requests"],
            t["at_target"]["failures"],
            f"{_fmt(t['at_target']['ttft_ms']['p95'])} / {_fmt(t['slo']['ttft_p95_ms'])}",
            f"{_fmt(t['at_target']['tpot_ms']['p95'])} / {_fmt(t['slo']['tpot_p95_ms'])}",
            _fmt(t["at_target"]["itl_ms"]["p95"]),
            _fmt(t["at_target"]["e2e_ms"]["p95"]),
            "n/a" if t["slo"]["attainment"] is None else f"{t['slo']['attainment']:.1%}",
            "met" if t["slo"]["met"] else "; ".join(t["slo"]["failures"]),
        ]
        for name, t in summary["tenants"].items()
    ]
    predictions = [
        [
            name,
            _fmt(t["predicted"]["ttft_p95_ms"]),
            _fmt(t["at_target"]["ttft_ms"]["p95"]),
            _pct(t["error_pct"]["ttft_p95"]),
            _fmt(t["predicted"]["tpot_ms"]),
            _fmt(t["at_target"]["tpot_ms"]["mean"]),
            _pct(t["error_pct"]["tpot_mean"]),
        ]
        for name, t in summary["tenants"].items()
    ]
    deployments = [
        [
            name,
            f"{_fmt(d['replicas'])} ({d['replicas_source']})",
            _fmt(d["predicted"]["tokens_per_s"]),
            _fmt(d["at_target"]["output_tokens_per_s_per_replica"]),
            _pct(d["error_pct"]["tokens_per_s"]),
            f"{_fmt(d['max_sustainable']['predicted_requests_per_s'])} at {d['max_sustainable']['predicted_at_concurrency']}",
            f"{_fmt(d['max_sustainable']['requests_per_s_per_replica'])} at "
            f"{_fmt(d['max_sustainable']['mean_in_flight_per_replica'])} ({d['max_sustainable']['stage']})",
            _pct(d["max_sustainable"]["error_pct"]) + (f" ({d['max_sustainable']['note']})" if d["max_sustainable"]["note"] else ""),
        ]
        for name, d in summary["deployments"].items()
    ]
    stages = [
        [s["stage"], f"x{s['level']:g}", _fmt(s["seconds"]), s["requests"], s["failures"], _fmt(s["requests_per_s"]),
         _fmt(s["output_tokens_per_s"]), _fmt(s["mean_in_flight"]), _fmt(s["ttft_p95_ms"]), _fmt(s["tpot_p95_ms"])]
        for s in summary["by_stage"]
    ]  # fmt: skip
    notes = "".join(f"<li>{html.escape(p)}</li>" for p in summary.get("notes", []))
    pictures = "".join(f'<p><img src="{html.escape(i)}" alt="{html.escape(i)}"></p>' for i in images)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>paliserve load test</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th{{background:#eee}}
.pass{{color:green}} .fail{{color:#b00}}</style></head><body>
<h1>paliserve load test: <span class="{'pass' if summary['passed'] else 'fail'}">{html.escape(verdict)}</span></h1>
<p>{html.escape(summary['shape'])} shape, {html.escape(summary['mode'])}-loop, {_fmt(summary['duration_s'])} s
({_fmt(summary['target_seconds'])} s at the plan's target load). Latency definitions as in vLLM's benchmark:
TTFT send to first chunk, TPOT (E2E - TTFT)/(tokens - 1), ITL gap between chunks, E2E send to last chunk.</p>
<ul>{''.join(f'<li class="fail">{html.escape(f)}</li>' for f in summary['failures'])}{notes}</ul>
<h2>SLO per tenant at the target load (ms, p95 measured / SLO)</h2>
{_table(["tenant", "requests", "failures", "TTFT p95 / SLO", "TPOT p95 / SLO", "ITL p95", "E2E p95", "attainment", "verdict"], tenants)}
<h2>Predicted vs measured per tenant</h2>
{_table(["tenant", "TTFT p95 predicted", "measured", "error", "TPOT predicted", "measured (mean)", "error"], predictions)}
<h2>Throughput per deployment (per replica)</h2>
{_table(["deployment", "replicas", "tokens/s predicted", "tokens/s measured at target", "error",
         "max req/s predicted at concurrency", "max sustained req/s measured at in-flight", "error"], deployments)}
<h2>By stage</h2>
{_table(["stage", "level", "seconds", "requests", "failures", "req/s", "tokens/s", "in flight", "TTFT p95", "TPOT p95"], stages)}
{pictures}
</body></html>
"""
