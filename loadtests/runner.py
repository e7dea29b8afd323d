"""`paliserve loadtest`: run Locust headless against a live endpoint with traffic from a plan,
then write the report and decide the exit code.

Exit codes: 0 every tenant meets its SLO at the target load; 1 at least one does not;
2 invalid plan, keys or options; 3 the load test itself could not run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import yaml

from .keys import supplied_keys, tenant_keys
from .locust_csv import read_users_over_time
from .records import read_records
from .summary import summarize
from .traffic import PlanError, TrafficProfile, profile_from_plan

EXIT_PASSED, EXIT_SLO_MISSED, EXIT_INVALID, EXIT_NOT_RUN = 0, 1, 2, 3
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CSV_PREFIX = "locust"
STOP_TIMEOUT_S = 10  # in-flight requests get this long to finish when users stop
STARTUP_GRACE_S = 60  # Locust start, image generation, report of the last requests
PROGRESS_EVERY_S = 5


@dataclass
class Options:
    plan: Path
    host: str
    shape: str = "steady"
    duration_s: float = 60
    report: Path = Path("loadtest-report")
    keys: Path | None = None
    prometheus: str | None = None
    mode: str = "closed"
    seed: int = 0
    max_error_rate: float = 0.01


def run(options: Options, say: Callable[[str], None] = print) -> int:
    from paliserve.spec import Plan

    out = options.report.resolve()
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "requests.jsonl"
    records_path.unlink(missing_ok=True)
    try:
        plan = Plan.model_validate(yaml.safe_load(options.plan.read_text()))
        keys = tenant_keys(plan, supplied_keys(options.keys))
        profile = profile_from_plan(plan, keys, options.mode, options.shape, options.duration_s, str(records_path), options.seed)
    except (PlanError, ValueError, OSError) as exc:
        say(f"error: {exc}")
        return EXIT_INVALID
    profile, notes = _calibrated(profile, options.host)
    for note in notes:
        say(note)
    profile_path = out / "profile.json"
    profile_path.write_text(profile.to_json())
    for t in profile.tenants:
        load = f"{t.concurrency} users" if profile.mode == "closed" else f"{t.request_rate:.2f} req/s ({t.rate_source})"
        say(f"tenant {t.name}: {load} on {t.model}, SLO TTFT p95 {t.slo_ttft_p95_ms:g} ms, TPOT p95 {t.slo_tpot_p95_ms:g} ms")

    started = time.time()
    rc = _run_locust(options, profile_path, out, records_path, say)
    ended = time.time()
    records = read_records(records_path)
    if rc not in (0, None) or not records:
        say(f"error: Locust {'exited with ' + str(rc) if rc else 'sent no request'}; see {out / 'locust.log'}")
        return EXIT_NOT_RUN

    series: dict = {}
    replicas: dict[str, float] = {}
    if options.prometheus:
        from .prometheus import mean_replicas, pull

        series, problems = pull(options.prometheus, started, ended)
        notes += [f"Prometheus: {p}" for p in problems]
        replicas = mean_replicas(series)
    else:
        notes.append("no --prometheus URL: replicas taken from the plan, no engine series")
    if profile.mode == "open":
        notes += [f"tenant {t.name}: open-loop rate {t.request_rate:.3f} req/s from {t.rate_source}" for t in profile.tenants]
    summary = summarize(profile, records, profile.schedule(), replicas, options.max_error_rate)
    summary["notes"] = notes
    summary["locust_csv"] = str(out / f"{CSV_PREFIX}_stats.csv")

    from .report import write_report

    test_start = min(r.start - r.elapsed for r in records)
    write_report(out, summary, records, read_users_over_time(out / CSV_PREFIX), series, test_start)
    _print_verdict(summary, say)
    say(f"report: {out / 'index.html'}")
    return EXIT_PASSED if summary["passed"] else EXIT_SLO_MISSED


def _calibrated(profile: TrafficProfile, host: str) -> tuple[TrafficProfile, list[str]]:
    """Prompts sized with the server's tokenizer (one calibration per model); 1 token a word
    when the calibration requests fail."""
    from .calibrate import tokens_per_word

    notes, per_model = [], {}
    for t in profile.tenants:
        if t.model not in per_model:
            try:
                per_model[t.model] = tokens_per_word(host, t.model, t.key, t.image_size)
                notes.append(f"model {t.model}: {per_model[t.model]:.2f} prompt tokens per word (calibrated)")
            except Exception as exc:  # the load test still runs; the note says the sizes are approximate
                per_model[t.model] = 1.0
                notes.append(f"model {t.model}: prompt calibration failed ({exc}); assuming 1 token per word")
    tenants = tuple(replace(t, tokens_per_word=per_model[t.model]) for t in profile.tenants)
    return replace(profile, tenants=tenants), notes


def locust_command(host: str, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
        "--csv", str(out / CSV_PREFIX), "--stop-timeout", str(STOP_TIMEOUT_S),
        "--exit-code-on-error", "0", "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip


def _run_locust(options: Options, profile_path: Path, out: Path, records_path: Path, say) -> int | None:
    env = {
        **os.environ,
        "PALISERVE_LOADTEST_PROFILE": str(profile_path),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
    }
    deadline = time.monotonic() + options.duration_s + STOP_TIMEOUT_S + STARTUP_GRACE_S
    with open(out / "locust.log", "w") as log:
        proc = subprocess.Popen(locust_command(options.host, out), env=env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        next_report = t0 + PROGRESS_EVERY_S
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            if time.monotonic() >= next_report:
                next_report += PROGRESS_EVERY_S
                say(_progress(time.monotonic() - t0, options.duration_s, records_path))
        if proc.poll() is None:
            say("Locust overran its deadline; stopping it")
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
    return proc.returncode


def _progress(elapsed: float, duration: float, records_path: Path) -> str:
    lines = records_path.read_text().splitlines() if records_path.exists() else []
    failed = sum('"ok": false' in line for line in lines)
    return f"  {elapsed:5.0f}s / {duration:g}s  requests done {len(lines)} ({failed} failed)"


def _print_verdict(summary: dict, say) -> None:
    for name, t in summary["tenants"].items():
        at = t["at_target"]
        say(
            f"tenant {name}: {at['requests']} requests at target, TTFT p95 {_ms(at['ttft_ms']['p95'])} "
            f"(predicted {t['predicted']['ttft_p95_ms']:g}, error {_pct(t['error_pct']['ttft_p95'])}), "
            f"TPOT p95 {_ms(at['tpot_ms']['p95'])} mean {_ms(at['tpot_ms']['mean'])} "
            f"(predicted {t['predicted']['tpot_ms']:g}, error {_pct(t['error_pct']['tpot_mean'])}), "
            f"attainment {t['slo']['attainment'] if t['slo']['attainment'] is not None else 'n/a'}"
        )
    for name, d in summary["deployments"].items():
        say(
            f"deployment {name}: {d['at_target']['output_tokens_per_s_per_replica']:g} tokens/s per replica "
            f"(predicted {d['predicted']['tokens_per_s']:g}, error {_pct(d['error_pct']['tokens_per_s'])})"
        )
    if summary["passed"]:
        say("PASS: every tenant meets its SLO at the target load")
    for failure in summary["failures"]:
        say(f"FAIL {failure}")


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"
