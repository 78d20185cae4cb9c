#!/usr/bin/env python3
"""Compare models (gpt_large vs gpt_large_stream) under the same open-loop load, over a sweep of arrival rates.

For each QPS point of --qps (ascending) and each model of --models, one run of tools/load_test.py's open-loop
test (its functions, imported as a module): Poisson arrivals for --duration seconds, random prompts of
--prompt-len-min..--prompt-len-max tokens, exactly --max-new-tokens new tokens each, stream=auto (decoupled models
stream, so TTFT is measured; non-decoupled ones give end-to-end latency only). The same --seed gives every model
the same schedule and the same prompts at a point (the JSON carries a fingerprint of both). Metric definitions
are load_test's: latencies are timed from each request's scheduled send time.

A point is *within budget* when P99 end-to-end <= --p99-e2e-ms, failed/scheduled <= --max-error-rate and at least
one request completed (load_test's checks with --slo p99_e2e_ms=BUDGET). A model's *highest sustained QPS* is the
highest point of the sweep's leading run of within-budget points (a pass above a failed point is not counted);
null when the first point already fails. With --stop-after-fail (default) a model's sweep stops at its first
failed point. Between points the tool waits until the server is idle (no pending, waiting or in-flight requests
on the metrics endpoint), then --cooldown seconds more.

Prints a markdown table, writes --output-json and a PNG of the sweep (P99 end-to-end latency and TTFT against
offered QPS, one line per model, the budget marked; --output-png, by default beside the JSON). Exit status: 0
when the comparison ran (it measures, it does not gate), 2 usage or connection error (the JSON, if asked for,
then holds the points measured so far).

    .venv/bin/python tools/compare_models.py --url 127.0.0.1:8001 --models gpt_large,gpt_large_stream \\
        --qps 2,4,8 --duration 60 --output-json artifacts/compare_models.json
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from typing import Optional

import numpy as np

from tools import endpoints, load_test, plots
from tools.cli import EXIT_OK, EXIT_USAGE, ToolError, utc_now, write_json
from tools.client import one_line
from tools.metrics import try_scrape
from tools.payload import DEFAULT_VOCAB
from tools.readiness import await_model

PROG = "compare_models"
# Gauges that are non-zero while a model still has work: Triton's queue, and gpt_large_stream's own slots/queue.
BUSY_GAUGES = ("nv_inference_pending_request_count", "gpt_inflight_requests", "gpt_waiting_requests")


# ---------------------------------------------------------------------------------------------------- one point
def load_test_args(args, model: str, qps: float) -> argparse.Namespace:
    """load_test's own argument namespace for one point (its parser applies its defaults and checks)."""
    argv = ["--url", args.url, "--metrics-url", args.metrics_url or "none", "--model", model,
            "--stream", "auto", "--target-qps", repr(float(qps)), "--duration", repr(float(args.duration)),
            "--arrival", "poisson", "--seed", str(args.seed),
            "--prompt-len-min", str(args.prompt_len_min), "--prompt-len-max", str(args.prompt_len_max),
            "--max-new-tokens", str(args.max_new_tokens), "--vocab", str(args.vocab),
            "--slo", f"p99_e2e_ms={args.p99_e2e_ms:g}", "--max-error-rate", repr(float(args.max_error_rate)),
            "--late-threshold-ms", repr(float(args.late_threshold_ms)),
            "--ready-timeout", repr(float(args.ready_timeout)),
            "--request-timeout", repr(float(args.request_timeout)), "--quiet"]
    if args.no_progress:
        argv.append("--no-progress")
    return load_test.parse_args(argv)


def fingerprint(schedule: np.ndarray, prompts: list) -> str:
    """Short hash of a schedule and its prompts: equal for two models means they saw the same load."""
    h = hashlib.sha256(np.asarray(schedule, dtype=np.float64).tobytes())
    for p in prompts:
        h.update(np.asarray(p, dtype=np.int32).tobytes() + b"|")
    return h.hexdigest()[:16]


def run_point(args, model: str, qps: float) -> dict:
    """One open-loop load test of `model` at `qps`; load_test's full report (ToolError on connection errors)."""
    lt_args = load_test_args(args, model, qps)
    schedule, prompts = load_test.workload(lt_args)  # load_test's own draw: both models see the same load
    try:
        _, report = load_test.measure(lt_args, schedule, prompts)
    except ToolError:
        raise
    except Exception as exc:  # the server went away mid-point (e.g. the statistics call after the requests)
        raise ToolError(f"{model} @ {qps:g} QPS: {one_line(exc)}") from None
    report["schedule_fingerprint"] = fingerprint(schedule, prompts)
    return report


def _p(summary: Optional[dict], key: str) -> Optional[float]:
    return None if not summary else summary.get(key)


def point_row(qps: float, report: dict) -> dict:
    """The comparison's view of one load_test report."""
    srv = report.get("server") or {}
    stats = srv.get("statistics_api") or {}
    e2e, ttft = report["e2e_ms"], report["ttft_ms"]
    return {
        "qps": qps,
        "offered_qps": report["offered_qps"],
        "scheduled": report["scheduled"],
        "completed": report["completed"],
        "failed": report["failed"],
        "failed_by_code": report["failed_by_code"],
        "error_rate": report["error_rate"],
        "late": report["late"],
        "send_lag_max_ms": _p(report["send_lag_ms"], "max"),
        "ttft_p50_ms": _p(ttft, "p50"),
        "ttft_p99_ms": _p(ttft, "p99"),
        "tpot_p50_ms": _p(report["tpot_ms"], "p50"),
        "e2e_p50_ms": _p(e2e, "p50"),
        "e2e_p90_ms": _p(e2e, "p90"),
        "e2e_p99_ms": _p(e2e, "p99"),
        "output_throughput": report["output_throughput"],
        "request_throughput": report["request_throughput"],
        "total_output_tokens": report["total_output_tokens"],
        "duration_s": report["duration_s"],
        "within_budget": bool(report["passed"]),
        "budget_failures": report["slo_check"]["failures"],
        "client_notes": report["client"]["notes"],
        "server_success": srv.get("nv_inference_request_success"),
        "server_generated_tokens": srv.get("gpt_generated_tokens_total"),
        "statistics_success": stats.get("success_count"),
        "statistics_fail": stats.get("fail_count"),
        "schedule_fingerprint": report["schedule_fingerprint"],
    }


# ---------------------------------------------------------------------------------------------------- verdicts
def highest_sustained(points: list) -> Optional[float]:
    """The highest QPS of the leading run of within-budget points (points in ascending QPS); None if none."""
    best = None
    for p in sorted(points, key=lambda p: p["qps"]):
        if not p["within_budget"]:
            break
        best = p["qps"]
    return best


def stream_ratio(models: dict) -> dict:
    """highest sustained QPS of the streaming model / that of the non-streaming one (one of each needed).

    bound: 'exact', or 'lower'/'upper'/'unknown' when a model was still within budget at the sweep's top point."""
    streaming = [m for m, r in models.items() if r["streaming"]]
    plain = [m for m, r in models.items() if r["streaming"] is False]
    out = {"stream_model": None, "non_stream_model": None, "value": None, "bound": None, "reason": None}
    if len(streaming) != 1 or len(plain) != 1:
        out["reason"] = (f"needs exactly one streaming and one non-streaming model (got {len(streaming)} "
                         f"streaming, {len(plain)} non-streaming)")
        return out
    out["stream_model"], out["non_stream_model"] = streaming[0], plain[0]
    s, n = models[streaming[0]]["highest_sustained_qps"], models[plain[0]]["highest_sustained_qps"]
    if s is None or n is None:
        out["reason"] = "a model sustained none of the sweep's points"
        if s is None and n is not None:
            out["value"] = 0.0
        return out
    out["value"] = s / n
    # a model that held the sweep's top point may sustain more: the ratio is then only a bound
    s_cap, n_cap = models[streaming[0]]["capped_by_sweep"], models[plain[0]]["capped_by_sweep"]
    out["bound"] = {(False, False): "exact", (True, False): "lower", (False, True): "upper"}.get((s_cap, n_cap),
                                                                                                "unknown")
    if out["bound"] != "exact":
        out["reason"] = "the sweep's top point was within budget for " + \
            " and ".join(m for m, cap in ((streaming[0], s_cap), (plain[0], n_cap)) if cap) + \
            ": extend --qps for an exact ratio"
    return out


# ---------------------------------------------------------------------------------------------------- server state
def wait_idle(url: Optional[str], timeout: float, interval: float = 0.2) -> tuple[bool, float, str]:
    """Wait until every BUSY_GAUGES series on the metrics endpoint reads 0: (idle, seconds waited, note)."""
    t0 = time.monotonic()
    if not url:
        return False, 0.0, "no metrics URL: idle state not checked"
    while True:
        snap = try_scrape(url)
        if snap is None:
            return False, time.monotonic() - t0, f"metrics endpoint {url} unreadable: idle state not checked"
        busy = {s.labels.get("model", "?"): s.value for g in BUSY_GAUGES for s in snap.select(g) if s.value}
        if not busy:
            return True, time.monotonic() - t0, ""
        if time.monotonic() - t0 >= timeout:
            return False, time.monotonic() - t0, f"server still busy after {timeout:g} s: {busy}"
        time.sleep(interval)


def preflight(args) -> dict:
    """Wait until every model is ready; {model: decoupled}. ToolError when unreachable or not ready."""
    return {model: await_model("grpc", args.url, model, args.ready_timeout, PROG).decoupled
            for model in args.models}


# ---------------------------------------------------------------------------------------------------- the sweep
def new_report(args) -> dict:
    return {
        "tool": PROG,
        "timestamp": utc_now(),
        "url": args.url,
        "metrics_url": args.metrics_url,
        "config": {
            "models": args.models, "qps": args.qps, "duration_s": args.duration, "arrival": "poisson",
            "seed": args.seed, "prompt_len_min": args.prompt_len_min, "prompt_len_max": args.prompt_len_max,
            "max_new_tokens": args.max_new_tokens, "ignore_eos": True, "vocab": args.vocab,
            "p99_e2e_ms": args.p99_e2e_ms, "max_error_rate": args.max_error_rate,
            "late_threshold_ms": args.late_threshold_ms, "stop_after_fail": args.stop_after_fail,
            "cooldown_s": args.cooldown, "idle_timeout_s": args.idle_timeout,
            "request_timeout_s": args.request_timeout,
        },
        "models": {m: {"streaming": None, "decoupled": None, "points": [], "highest_sustained_qps": None,
                       "capped_by_sweep": False, "stopped_after_qps": None} for m in args.models},
        "stream_over_non_stream": None,
        "warnings": [],
        "complete": False,
        "error": None,
    }


def finish(report: dict, args) -> dict:
    """Per-model verdicts and the ratio, from the points measured so far."""
    for name, m in report["models"].items():
        m["highest_sustained_qps"] = highest_sustained(m["points"])
        m["capped_by_sweep"] = m["highest_sustained_qps"] is not None and m["highest_sustained_qps"] == max(args.qps)
    report["stream_over_non_stream"] = stream_ratio(report["models"])
    return report


def sweep(args, report: dict, log=sys.stderr) -> None:
    """Run every (QPS, model) point, models interleaved at each QPS; fills `report` as it goes."""
    decoupled = preflight(args)
    for model, d in decoupled.items():
        report["models"][model]["decoupled"] = d
        report["models"][model]["streaming"] = d  # stream=auto
    first = True
    for qps in args.qps:
        for model in args.models:
            m = report["models"][model]
            if m["stopped_after_qps"] is not None:
                continue
            if not first:
                idle, waited, note = wait_idle(args.metrics_url, args.idle_timeout)
                if note and note not in report["warnings"]:
                    report["warnings"].append(note)
                    print(f"{PROG}: warning: {note}", file=log)
                time.sleep(args.cooldown)
            first = False
            lt = run_point(args, model, qps)
            m["streaming"] = lt["streaming"]
            row = point_row(qps, lt)
            row["load_test"] = lt
            m["points"].append(row)
            print(f"{PROG}: {model} @ {qps:g} QPS: {row['completed']}/{row['scheduled']} ok, "
                  f"p99 e2e {_fmt(row['e2e_p99_ms'])} ms, "
                  + ("within budget" if row["within_budget"] else "OVER budget: " + "; ".join(row["budget_failures"])),
                  file=log)
            for client_note in row["client_notes"]:  # late sends, a saturated client or host
                note = f"{model} @ {qps:g} QPS: {client_note}"
                report["warnings"].append(note)
                print(f"{PROG}: warning: {note}", file=log)
            if args.stop_after_fail and not row["within_budget"]:
                m["stopped_after_qps"] = qps
    report["complete"] = True


# ---------------------------------------------------------------------------------------------------- output
def _fmt(v, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _trio(*vals) -> str:
    return " / ".join(_fmt(v, 0) for v in vals) if any(v is not None for v in vals) else "–"


def markdown(report: dict) -> str:
    """Per-point table, then the per-model verdicts and the ratio."""
    c = report["config"]
    lines = [f"### {PROG}: P99 e2e budget {c['p99_e2e_ms']:g} ms, error budget {c['max_error_rate']:.0%}, "
             f"Poisson, {c['duration_s']:g} s per point, prompts {c['prompt_len_min']}-{c['prompt_len_max']}, "
             f"{c['max_new_tokens']} new tokens, seed {c['seed']}",
             "",
             "| model | QPS | offered | completed / scheduled | failed | late | TTFT p50 / p99 (ms) "
             "| e2e p50 / p90 / p99 (ms) | out tok/s | req/s | within budget |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for name, m in report["models"].items():
        for p in m["points"]:
            lines.append(
                f"| {name} | {p['qps']:g} | {_fmt(p['offered_qps'], 2)} | {p['completed']} / {p['scheduled']} "
                f"| {p['failed']} | {p['late']} "
                f"| {_trio(p['ttft_p50_ms'], p['ttft_p99_ms'])} "
                f"| {_trio(p['e2e_p50_ms'], p['e2e_p90_ms'], p['e2e_p99_ms'])} "
                f"| {_fmt(p['output_throughput'])} | {_fmt(p['request_throughput'], 2)} "
                f"| {'yes' if p['within_budget'] else 'no'} |")
    over = [f"- {name} @ {p['qps']:g} QPS: {'; '.join(p['budget_failures'])}"
            for name, m in report["models"].items() for p in m["points"] if not p["within_budget"]]
    if over:
        lines += ["", "Over budget:", *over]
    lines += ["", "| model | streaming | highest sustained QPS |", "|---|:---:|---:|"]
    for name, m in report["models"].items():
        best = m["highest_sustained_qps"]
        text = "none" if best is None else f"{best:g}" + (" (top of sweep)" if m["capped_by_sweep"] else "")
        lines.append(f"| {name} | {'yes' if m['streaming'] else 'no'} | {text} |")
    r = report["stream_over_non_stream"] or {}
    if r.get("value") is not None:
        qualifier = {"exact": "", "lower": " (at least)", "upper": " (at most)"}.get(r["bound"], " (bound unknown)")
        lines += ["", f"stream / non-stream highest sustained QPS ({r['stream_model']} / {r['non_stream_model']}): "
                      f"{r['value']:.2f}x{qualifier}" + (f"; {r['reason']}" if r.get("reason") else "")]
    elif r.get("reason"):
        lines += ["", f"stream / non-stream: n/a ({r['reason']})"]
    if not report["complete"]:
        lines += ["", f"INCOMPLETE: {report['error']}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def _csv(text: str, cast, what: str) -> list:
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad {what} list {text!r}") from None
    if not items:
        raise argparse.ArgumentTypeError(f"empty {what} list")
    return items


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit status: 0 the comparison ran, 2 usage or connection error. Metric definitions: load_test.")
    g = p.add_argument_group("server")
    endpoints.add_arguments(g)
    g.add_argument("--models", default="gpt_large,gpt_large_stream", help="comma list of models to compare")
    g.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for each model to be ready")
    g.add_argument("--request-timeout", type=float, default=300.0, help="per-request client timeout (s)")
    g = p.add_argument_group("load")
    g.add_argument("--qps", default="2,4,8", help="comma list of mean arrival rates (requests/s), ascending")
    g.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per point")
    g.add_argument("--seed", type=int, default=0, help="RNG seed for arrivals and prompts (the same for every model)")
    g.add_argument("--prompt-len-min", type=int, default=128, help="shortest prompt (tokens)")
    g.add_argument("--prompt-len-max", type=int, default=512, help="longest prompt (tokens)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="max_tokens of each request (end id ignored)")
    g.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help="prompt token ids are drawn from [0, vocab)")
    g = p.add_argument_group("budget")
    g.add_argument("--p99-e2e-ms", type=float, default=2500.0, help="P99 end-to-end latency budget per point (ms)")
    g.add_argument("--max-error-rate", type=float, default=0.01, help="error budget per point: failed / scheduled")
    g.add_argument("--late-threshold-ms", type=float, default=10.0,
                   help="a send starting more than this after its schedule counts as late")
    g.add_argument("--stop-after-fail", action=argparse.BooleanOptionalAction, default=True,
                   help="stop sweeping a model after its first point over budget")
    g.add_argument("--cooldown", type=float, default=2.0,
                   help="seconds to pause between points, after the server is idle")
    g.add_argument("--idle-timeout", type=float, default=60.0,
                   help="longest wait for the server to become idle before a point (then go on, with a warning)")
    g = p.add_argument_group("output")
    g.add_argument("--output-json", default=None, help="write the comparison here")
    g.add_argument("--output-png", default=None, help="PNG of the sweep [<output-json stem>.png]")
    g.add_argument("--no-png", action="store_true", help="skip the PNG")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (also off when stderr is not a TTY)")
    g.add_argument("--quiet", action="store_true", help="no markdown table on stdout")
    args = p.parse_args(argv)
    try:
        args.models = _csv(args.models, str, "--models")
        args.qps = _csv(args.qps, float, "--qps")
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    if len(set(args.models)) != len(args.models):
        p.error("--models lists a model twice")
    if any(q <= 0 for q in args.qps) or args.qps != sorted(set(args.qps)):
        p.error("--qps must be positive and strictly ascending (e.g. 2,4,8)")
    if args.duration <= 0:
        p.error("--duration must be > 0")
    if args.prompt_len_min < 1 or args.prompt_len_max < args.prompt_len_min:
        p.error("need 1 <= --prompt-len-min <= --prompt-len-max")
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be >= 1")
    if args.vocab < 1:
        p.error("--vocab must be > 0")
    if args.p99_e2e_ms <= 0:
        p.error("--p99-e2e-ms must be > 0")
    if not 0 <= args.max_error_rate <= 1:
        p.error("--max-error-rate must be in [0, 1]")
    if args.cooldown < 0 or args.idle_timeout < 0:
        p.error("--cooldown and --idle-timeout must be >= 0")
    endpoints.resolve_args(p, args)
    if args.output_json and not args.output_png:
        args.output_png = os.path.splitext(args.output_json)[0] + ".png"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"{PROG}: {args.endpoints.describe()}", file=sys.stderr)
    report = new_report(args)
    status = EXIT_OK
    try:
        sweep(args, report)
    except ToolError as exc:
        report["error"] = str(exc)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        status = EXIT_USAGE
    except KeyboardInterrupt:
        report["error"] = "interrupted"
        print(f"{PROG}: interrupted", file=sys.stderr)
        status = EXIT_USAGE
    finish(report, args)
    measured = any(m["points"] for m in report["models"].values())
    if args.output_json and (measured or status == EXIT_OK):
        write_json(args.output_json, report)
    if measured and args.output_png and not args.no_png:
        err = plots.save_sweep(args.output_png, report)
        if err:
            print(f"{PROG}: warning: no PNG: {err}", file=sys.stderr)
    if not args.quiet and measured:
        print(markdown(report))
    return status


if __name__ == "__main__":
    sys.exit(main())
