#!/usr/bin/env python3
"""Open-loop load test of a Triton generation model over gRPC.

Arrival times are drawn before the run (Poisson by default, constant, or gamma with a burstiness factor) and every
request is sent at its scheduled time whatever the server is doing: slow periods show up as latency instead of
being hidden by a client that waits. Latencies are timed from each request's *scheduled* send time; a send that
starts more than --late-threshold-ms after its schedule is counted as late (the client could not keep up, so the
offered load was lower than asked), and the verdict line says so, as it does when the client's CPU was saturated.

Streaming (decoupled) models such as gpt_large_stream are called through the gRPC stream with stream=true, which
gives TTFT, TPOT and inter-token latencies; non-streaming models (gpt_large) give end-to-end latency only.

The run reads the server's own counters for the same window (metrics endpoint and the statistics API) and
reports them beside its own counts. Outputs: --output-json (metric definitions: docs/tools.md), a per-request CSV
and a PNG report. Exit status: 0 passed, 1 an SLO or the error budget failed, 2 usage or connection error.

    .venv/bin/python tools/load_test.py --url 127.0.0.1:8001 --model gpt_large --target-qps 4 --duration 60 \\
        --prompt-len-min 128 --prompt-len-max 512 --max-new-tokens 256 --slo e2e_ms=2500 \\
        --output-json artifacts/load_test.json
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from tools import endpoints, plots
from tools.cli import EXIT_CHECK_FAILED, EXIT_OK, ToolError, run_guarded, stderr_is_tty, utc_now, verdict_line, \
    write_json
from tools.client import error_code, one_line
from tools.metrics import histogram_delta_mean, scrape, scrape_settled, server_counter_deltas
from tools.payload import DEFAULT_MODEL, DEFAULT_VOCAB, build_inputs, is_final_response, random_prompts, \
    reported_tokens, requested_outputs, response_ids
from tools.readiness import await_model
from tools.saturation import ClientMeter, client_notes
from tools.slo import parse_slo, slo_text
from tools.stats import percentile, summarize

PROG = "load_test"


# ---------------------------------------------------------------------------------------------------- schedule
def arrival_times(rng: np.random.Generator, qps: float, duration: Optional[float], num_requests: Optional[int],
                  process: str = "poisson", burstiness: float = 1.0) -> np.ndarray:
    """Scheduled send offsets in seconds from the start, the first at 0.

    poisson: exponential gaps with mean 1/qps. gamma: gamma-distributed gaps with shape=burstiness and mean 1/qps
    (burstiness 1 is Poisson, < 1 burstier, > 1 more regular), as vLLM's benchmark. constant: gaps of exactly 1/qps.
    With num_requests the schedule has exactly that many arrivals; otherwise every arrival before `duration`."""
    if qps <= 0:
        raise ToolError("--target-qps must be > 0")
    if process == "constant":
        gaps_fn = lambda k: np.full(k, 1.0 / qps)  # noqa: E731
    else:
        shape = 1.0 if process == "poisson" else burstiness
        if shape <= 0:
            raise ToolError("--burstiness must be > 0")
        gaps_fn = lambda k: rng.gamma(shape, 1.0 / (qps * shape), size=k)  # noqa: E731
    if num_requests is not None:
        gaps = gaps_fn(max(num_requests - 1, 0))
        return np.concatenate([[0.0], np.cumsum(gaps)])[:num_requests]
    times = [np.zeros(1)]
    last = 0.0
    while last < duration:
        chunk = np.cumsum(gaps_fn(int(qps * duration) + 16)) + last
        times.append(chunk)
        last = float(chunk[-1])
    out = np.concatenate(times)
    return out[out < duration]


# ---------------------------------------------------------------------------------------------------- per request
@dataclass
class Record:
    index: int
    scheduled: float  # s from the run's start
    prompt_tokens: int
    send_start: Optional[float] = None
    first_token: Optional[float] = None
    end: Optional[float] = None
    token_times: list = field(default_factory=list)  # arrival of each response carrying tokens (streaming)
    streamed_tokens: int = 0  # ids received in output_ids, summed over every response
    reported_tokens: Optional[int] = None  # num_output_tokens
    ok: bool = False
    error_code: str = ""
    error: str = ""

    @property
    def output_tokens(self) -> int:
        return self.reported_tokens if self.reported_tokens is not None else self.streamed_tokens

    def send_lag_ms(self):
        return None if self.send_start is None else (self.send_start - self.scheduled) * 1e3

    def e2e_ms(self):
        return None if self.end is None or not self.ok else (self.end - self.scheduled) * 1e3

    def ttft_ms(self):
        return None if self.first_token is None or not self.ok else (self.first_token - self.scheduled) * 1e3

    def tpot_ms(self):
        ttft, e2e, n = self.ttft_ms(), self.e2e_ms(), self.output_tokens
        return None if ttft is None or e2e is None or n < 2 else (e2e - ttft) / (n - 1)

    def itl_ms(self) -> list:
        t = self.token_times
        return [(b - a) * 1e3 for a, b in zip(t, t[1:])] if self.ok else []


def request_metric(rec: Record, metric: str):
    """The per-request value an SLO on `metric` is checked against (itl_ms: the request's longest gap)."""
    if metric == "itl_ms":
        gaps = rec.itl_ms()
        return max(gaps) if gaps else None
    return {"e2e_ms": rec.e2e_ms, "ttft_ms": rec.ttft_ms, "tpot_ms": rec.tpot_ms}[metric]()


def latency_values(records, streaming: bool) -> dict[str, list]:
    """Every latency sample of the completed requests by metric (ITL: every gap of every request); the streaming
    metrics only when the model streamed."""
    values = {"e2e_ms": [r.e2e_ms() for r in records]}
    if streaming:
        values.update(ttft_ms=[r.ttft_ms() for r in records], tpot_ms=[r.tpot_ms() for r in records],
                      itl_ms=[x for r in records for x in r.itl_ms()])
    return values


def meets(rec: Record, slos) -> bool:
    if not rec.ok:
        return False
    for slo in slos:
        value = request_metric(rec, slo.metric)
        if value is not None and value > slo.limit:
            return False
        if value is None and slo.metric in ("e2e_ms", "ttft_ms"):
            return False
    return True


# ---------------------------------------------------------------------------------------------------- the run
def stats_counts(stats_json, model: str) -> dict:
    for m in stats_json.get("model_stats", []):
        if m.get("name") == model:
            inf = m.get("inference_stats", {})
            return {"success_count": int(inf.get("success", {}).get("count", 0)),
                    "fail_count": int(inf.get("fail", {}).get("count", 0)),
                    "inference_count": int(m.get("inference_count", 0)),
                    "execution_count": int(m.get("execution_count", 0))}
    return {}


def streaming_mode(args, decoupled: bool) -> bool:
    """Whether the run streams (--stream auto: when the model is decoupled); ToolError when it cannot."""
    if args.stream == "on" and not decoupled:
        raise ToolError(f"model {args.model!r} is not decoupled, so it cannot stream (use --stream auto "
                        "or a streaming model such as gpt_large_stream)")
    streaming = decoupled and args.stream != "off"
    bad = [s.key for s in args.slos if s.metric != "e2e_ms"]
    if not streaming and bad:
        raise ToolError(f"SLO {', '.join(bad)} needs token timings, which only a streaming run has "
                        f"(model {args.model!r}, --stream {args.stream})")
    return streaming


class Runner:
    def __init__(self, args, schedule: np.ndarray, prompts: list, decoupled: bool):
        self.args = args
        self.records = [Record(i, float(t), len(p)) for i, (t, p) in enumerate(zip(schedule, prompts))]
        self.prompts = prompts
        self.decoupled = decoupled
        self.streaming = streaming_mode(args, decoupled)
        self.t0 = 0.0
        self.before = self.after = None  # metrics snapshots
        self.stats_before = self.stats_after = None
        self.metrics_error: Optional[str] = None if args.metrics_url else "not read (--metrics-url none)"
        self.client_load: dict = {}
        self.progress = None

    async def run(self) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aio

        a = self.args
        client = aio.InferenceServerClient(a.url)
        try:
            outputs = requested_outputs(grpcclient)
            stream_flag = self.streaming if self.decoupled else None
            inputs = [build_inputs(grpcclient, p, a.max_new_tokens, ignore_eos=not a.no_ignore_eos,
                                   temperature=a.temperature, seed=a.seed + i if a.temperature else None,
                                   stream=stream_flag)
                      for i, p in enumerate(self.prompts)]
            self.before = self._scrape()
            self.stats_before = stats_counts(await client.get_inference_statistics(a.model, as_json=True), a.model)
            self.progress = _progress(len(self.records), a.no_progress)
            meter = ClientMeter()
            meter.start()
            tasks = []
            self.t0 = time.perf_counter() + 0.02
            for rec in self.records:
                delay = self.t0 + rec.scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._send(client, rec, inputs[rec.index], outputs)))
            await asyncio.gather(*tasks)
            self.client_load = meter.stop()
            if self.progress is not None:
                self.progress.close()
            if self.before is not None:
                self.after = self._scrape(settled=True)
            self.stats_after = stats_counts(await client.get_inference_statistics(a.model, as_json=True), a.model)
        finally:
            await client.close()

    def _scrape(self, settled: bool = False):
        if not self.args.metrics_url:
            return None
        try:
            if settled:
                return scrape_settled(self.args.metrics_url,
                                      ("nv_inference_request_success", "gpt_generated_tokens_total"),
                                      {"model": self.args.model})
            return scrape(self.args.metrics_url)
        except ToolError as exc:
            self.metrics_error = str(exc)
            return None

    async def _send(self, client, rec: Record, inputs, outputs) -> None:
        a = self.args
        try:
            if a.inject_send_delay_ms and rec.index == a.inject_delay_index:
                await asyncio.sleep(a.inject_send_delay_ms / 1e3)  # test hook: this send starts late
            rec.send_start = time.perf_counter() - self.t0
            if self.decoupled:
                await self._stream(client, rec, inputs, outputs)
            else:
                result = await client.infer(a.model, inputs, outputs=outputs, request_id=str(rec.index),
                                            client_timeout=a.request_timeout)
                rec.end = time.perf_counter() - self.t0
                rec.reported_tokens, rec.streamed_tokens = reported_tokens(result), len(response_ids(result))
                rec.ok = True
        except Exception as exc:  # InferenceServerException, grpc AioRpcError (deadline), ...
            rec.end = time.perf_counter() - self.t0
            rec.ok, rec.error_code, rec.error = False, error_code(exc), one_line(exc)
        finally:
            if self.progress is not None:
                self.progress.update(1)

    async def _stream(self, client, rec: Record, inputs, outputs) -> None:
        a = self.args

        async def one_request():
            yield {"model_name": a.model, "inputs": inputs, "outputs": outputs, "request_id": str(rec.index)}

        final = False
        async for result, error in client.stream_infer(one_request(), stream_timeout=a.request_timeout):
            now = time.perf_counter() - self.t0
            if error is not None:
                rec.end, rec.ok = now, False
                rec.error_code, rec.error = error_code(error), one_line(error)
                return
            ids, reported = response_ids(result), reported_tokens(result)
            if ids:  # any number of tokens per response (coalesced delivery); the final one may carry some too
                rec.streamed_tokens += len(ids)
                if self.streaming:
                    rec.token_times.append(now)
                    if rec.first_token is None:
                        rec.first_token = now
            if reported is not None:
                rec.reported_tokens = reported
            if is_final_response(result) or reported is not None:
                final, rec.end, rec.ok = True, now, True
                # the server closes the stream after the final response (this side has half-closed it)
        if not final:
            rec.end, rec.ok = time.perf_counter() - self.t0, False
            rec.error_code, rec.error = "STREAM_ERROR", "stream ended without a final response"


def _progress(total: int, disabled: bool):
    if disabled or not stderr_is_tty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="req", desc=PROG, file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------- report
def slo_failures(args, ok, failed, good, values) -> tuple[list, list]:
    """(why the run failed, the percentile checks): no completed request, the error budget, the attainment of the
    per-request SLOs, and every run-level percentile limit."""
    scheduled = len(ok) + len(failed)
    per_request_slos = [s for s in args.slos if s.percentile is None]
    failures = []
    if not ok:
        failures.append("no request completed")
    if scheduled and len(failed) / scheduled > args.max_error_rate:
        failures.append(f"error rate {len(failed) / scheduled:.2%} > --max-error-rate {args.max_error_rate:.2%} "
                        f"({len(failed)} of {scheduled} failed)")
    attainment = len(good) / scheduled if scheduled else None
    if per_request_slos and attainment is not None and attainment < args.slo_attainment:
        failures.append(f"SLO attainment {attainment:.2%} < {args.slo_attainment:.2%} "
                        f"({len(good)} of {scheduled} requests met {slo_text(per_request_slos)})")
    checks = []
    for slo in (s for s in args.slos if s.percentile is not None):
        samples = values.get(slo.metric) or [request_metric(r, slo.metric) for r in ok]
        value = percentile([v for v in samples if v is not None], slo.percentile)
        passed = value is not None and value <= slo.limit
        checks.append({"slo": slo.key, "limit": slo.limit, "value": value, "passed": passed})
        if not passed:
            failures.append(f"{slo.key}: measured {_fmt(value)} > {slo.limit:g}")
    return failures, checks


def build_report(args, runner: Runner) -> dict:
    recs = runner.records
    ok = [r for r in recs if r.ok]
    failed = [r for r in recs if not r.ok]
    sent = [r for r in recs if r.send_start is not None]
    late = [r for r in sent if r.send_lag_ms() > args.late_threshold_ms]
    first_send = min((r.send_start for r in sent), default=None)
    last_response = max((r.end for r in recs if r.end is not None), default=None)
    window = (last_response - first_send) if first_send is not None and last_response is not None else None
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.prompt_tokens for r in ok)
    per_request_slos = [s for s in args.slos if s.percentile is None]
    good = [r for r in ok if meets(r, per_request_slos)]

    def rate(n):
        return n / window if window else None

    values = latency_values(ok, runner.streaming)
    latency = {k: summarize(values[k]) if k in values else None for k in ("e2e_ms", "ttft_ms", "tpot_ms", "itl_ms")}
    scheduled = len(recs)
    failures, percentile_checks = slo_failures(args, ok, failed, good, values)
    send_lag = summarize(r.send_lag_ms() for r in sent)
    client = dict(runner.client_load,
                  notes=client_notes(runner.client_load, len(late), len(sent), args.late_threshold_ms,
                                     send_lag["max"]))
    return {
        "tool": PROG,
        "timestamp": utc_now(),
        "model": args.model,
        "url": args.url,
        "metrics_url": args.metrics_url,
        "streaming": runner.streaming,
        "decoupled": runner.decoupled,
        "config": {
            "target_qps": args.target_qps, "duration_s": args.duration, "num_requests": args.num_requests,
            "arrival": args.arrival, "burstiness": args.burstiness if args.arrival == "gamma" else None,
            "seed": args.seed, "prompt_len_min": args.prompt_len_min, "prompt_len_max": args.prompt_len_max,
            "max_new_tokens": args.max_new_tokens, "ignore_eos": not args.no_ignore_eos,
            "temperature": args.temperature, "vocab": args.vocab, "late_threshold_ms": args.late_threshold_ms,
            "request_timeout_s": args.request_timeout, "slo": args.slo, "slo_attainment": args.slo_attainment,
            "max_error_rate": args.max_error_rate, "inject_send_delay_ms": args.inject_send_delay_ms,
            "inject_delay_index": args.inject_delay_index if args.inject_send_delay_ms else None,
        },
        "scheduled": scheduled,
        "sent": len(sent),
        "completed": len(ok),
        "failed": len(failed),
        "failed_by_code": dict(collections.Counter(r.error_code for r in failed)),
        "error_messages": dict(collections.Counter(r.error for r in failed).most_common(10)),
        "error_rate": len(failed) / scheduled if scheduled else 0.0,
        "late": len(late),
        "late_fraction": len(late) / len(sent) if sent else None,
        "late_threshold_ms": args.late_threshold_ms,
        "late_indices": [r.index for r in late][:1000],
        "send_lag_ms": send_lag,
        # n arrivals span n - 1 gaps, the first at offset 0
        "offered_qps": (scheduled - 1) / float(recs[-1].scheduled) if scheduled > 1 and recs[-1].scheduled > 0
        else None,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "output_tokens_per_request": summarize(r.output_tokens for r in ok),
        "token_count_mismatches": sum(1 for r in ok if r.reported_tokens is not None
                                      and r.streamed_tokens != r.reported_tokens),
        "duration_s": window,
        "request_throughput": rate(len(ok)),
        "output_throughput": rate(out_tokens),
        "total_token_throughput": rate(out_tokens + in_tokens),
        **latency,
        "goodput": {
            "slo": {s.key: s.limit for s in per_request_slos},
            "good_requests": len(good) if per_request_slos else len(ok),
            "goodput": rate(len(good) if per_request_slos else len(ok)),
            "attainment": (len(good) if per_request_slos else len(ok)) / scheduled if scheduled else None,
        },
        "slo_checked": bool(args.slos),
        "slo_check": {"passed": not failures, "failures": failures, "percentiles": percentile_checks},
        "client": client,
        "server": server_section(args, runner),
        "passed": not failures,
    }


def server_section(args, runner: Runner) -> dict:
    out: dict = {"metrics_error": runner.metrics_error}
    if runner.before is not None and runner.after is not None:
        out.update(server_counter_deltas(runner.before, runner.after, args.model))
        out["gpt_batch_size_mean"] = histogram_delta_mean(runner.before, runner.after, "gpt_batch_size",
                                                          model=args.model)
    if runner.stats_before and runner.stats_after:
        sa = {k: runner.stats_after[k] - runner.stats_before.get(k, 0) for k in runner.stats_after}
        out["statistics_api"] = sa
        out["avg_batch_size"] = sa["inference_count"] / sa["execution_count"] if sa["execution_count"] else None
    return out


def verdict_notes(report: dict) -> list:
    """What the verdict line must carry beside PASSED/FAILED."""
    notes = [] if report["slo_checked"] else [
        f"no SLO checked (no --slo): only completion and the error budget "
        f"(--max-error-rate {report['config']['max_error_rate']:g})"]
    return notes + report["client"]["notes"]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _opt(v, digits):
    return "" if v is None else f"{v:.{digits}f}"


def write_csv(path: str, runner: Runner, args) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "scheduled_s", "send_start_s", "send_lag_ms", "late", "end_s", "status",
                    "error_code", "prompt_tokens", "output_tokens", "token_responses", "ttft_ms", "tpot_ms",
                    "e2e_ms", "itl_mean_ms", "itl_max_ms", "error"])
        for r in runner.records:
            itl = r.itl_ms()
            lag = r.send_lag_ms()
            w.writerow([r.index, f"{r.scheduled:.6f}", _opt(r.send_start, 6), _opt(lag, 3),
                        int(lag is not None and lag > args.late_threshold_ms), _opt(r.end, 6),
                        "ok" if r.ok else "error", r.error_code, r.prompt_tokens, r.output_tokens if r.ok else "",
                        len(r.token_times), _opt(r.ttft_ms(), 3), _opt(r.tpot_ms(), 3), _opt(r.e2e_ms(), 3),
                        _opt(sum(itl) / len(itl) if itl else None, 3), _opt(max(itl) if itl else None, 3), r.error])


def print_summary(report: dict, file=sys.stdout) -> None:
    def row(name, value):
        print(f"  {name:<38}{value}", file=file)

    print(f"== {PROG}: {report['model']} ({'streaming' if report['streaming'] else 'non-streaming'}) ==", file=file)
    row("scheduled / completed / failed", f"{report['scheduled']} / {report['completed']} / {report['failed']}"
        + (f"  {report['failed_by_code']}" if report["failed"] else ""))
    row(f"late sends (> {report['late_threshold_ms']:g} ms)", report["late"])
    row("window (s)", _fmt(report["duration_s"]))
    row("request throughput (req/s)", _fmt(report["request_throughput"]))
    row("output throughput (tok/s)", _fmt(report["output_throughput"]))
    for key in ("e2e_ms", "ttft_ms", "tpot_ms", "itl_ms"):
        s = report[key]
        if s and s["count"]:
            row(f"{key} mean/p50/p90/p99", "/".join(_fmt(s[k]) for k in ("mean", "p50", "p90", "p99")))
    g = report["goodput"]
    if g["slo"]:
        row("goodput (req/s), attainment", f"{_fmt(g['goodput'])}, {g['attainment']:.1%}")
    c = report["client"]
    if c.get("loop_thread_busy") is not None:
        host = "n/a" if c["host_cpu_busy"] is None else f"{c['host_cpu_busy']:.0%}"
        row("client loop busy / host CPU busy", f"{c['loop_thread_busy']:.0%} / {host}")
    srv = report["server"]
    if "nv_inference_request_success" in srv:
        row("server: success / generated tokens",
            f"{srv['nv_inference_request_success']} / {srv.get('gpt_generated_tokens_total')}")
    for failure in report["slo_check"]["failures"]:
        print(f"  FAILED: {failure}", file=file)
    print(f"  {verdict_line(report['passed'], verdict_notes(report))}", file=file)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit status: 0 passed, 1 SLO/error budget failed, 2 usage or connection error. "
               "Metric definitions: docs/tools.md.")
    g = p.add_argument_group("server")
    endpoints.add_arguments(g)
    g.add_argument("--model", default=DEFAULT_MODEL, help="model name (gpt_large, gpt_large_stream, ...)")
    g.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                   help="stream tokens (decoupled models only); auto: stream when the model is decoupled")
    g.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for the model to be ready")
    g.add_argument("--request-timeout", type=float, default=300.0, help="per-request client timeout (s)")
    g = p.add_argument_group("load")
    g.add_argument("--target-qps", type=float, default=4.0, help="mean arrival rate (requests/s)")
    g.add_argument("--duration", type=float, default=60.0, help="schedule arrivals over this many seconds")
    g.add_argument("--num-requests", type=int, default=None,
                   help="schedule exactly this many arrivals instead (at --target-qps; --duration ignored)")
    g.add_argument("--arrival", choices=("poisson", "constant", "gamma"), default="poisson",
                   help="inter-arrival distribution")
    g.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape for --arrival gamma (1 = Poisson, <1 burstier, >1 smoother)")
    g.add_argument("--seed", type=int, default=0, help="RNG seed for arrivals and prompts")
    g.add_argument("--prompt-len-min", type=int, default=128, help="shortest prompt (tokens)")
    g.add_argument("--prompt-len-max", type=int, default=512, help="longest prompt (tokens)")
    g.add_argument("--max-new-tokens", type=int, default=256, help="max_tokens of each request")
    g.add_argument("--no-ignore-eos", action="store_true",
                   help="let generation stop at the end token (default: end_id=-1, exactly max-new-tokens)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: greedy)")
    g.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help="prompt token ids are drawn from [0, vocab)")
    g = p.add_argument_group("checks")
    g.add_argument("--slo", default="",
                   help="comma list of per-request limits METRIC=MS (goodput) and run limits pNN_METRIC=MS; "
                        "METRIC: e2e_ms, ttft_ms, tpot_ms, itl_ms. e.g. e2e_ms=2500,ttft_ms=500,p99_e2e_ms=3000")
    g.add_argument("--slo-attainment", type=float, default=0.99,
                   help="fraction of scheduled requests that must meet every per-request SLO")
    g.add_argument("--max-error-rate", type=float, default=0.01, help="error budget: failed / scheduled")
    g.add_argument("--late-threshold-ms", type=float, default=10.0,
                   help="a send starting more than this after its schedule counts as late")
    g.add_argument("--inject-send-delay-ms", type=float, default=0.0,
                   help="test hook: delay the send of request --inject-delay-index by this much")
    g.add_argument("--inject-delay-index", type=int, default=0, help="test hook: which request to delay")
    g = p.add_argument_group("output")
    g.add_argument("--output-json", default=None, help="write the report here")
    g.add_argument("--output-csv", default=None, help="per-request CSV [<output-json stem>.requests.csv]")
    g.add_argument("--output-png", default=None, help="PNG report [<output-json stem>.png]")
    g.add_argument("--no-png", action="store_true", help="skip the PNG report")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a TTY)")
    g.add_argument("--quiet", action="store_true", help="no summary on stdout")
    args = p.parse_args(argv)
    if args.prompt_len_min < 1 or args.prompt_len_max < args.prompt_len_min:
        p.error("need 1 <= --prompt-len-min <= --prompt-len-max")
    if args.max_new_tokens < 1:
        p.error("--max-new-tokens must be >= 1")
    if args.num_requests is None and args.duration <= 0:
        p.error("--duration must be > 0")
    if args.num_requests is not None and args.num_requests < 1:
        p.error("--num-requests must be >= 1")
    if not 0 < args.vocab:
        p.error("--vocab must be > 0")
    try:
        args.slos = parse_slo(args.slo)
    except ToolError as exc:
        p.error(str(exc))
    endpoints.resolve_args(p, args)
    if args.output_json:
        stem = os.path.splitext(args.output_json)[0]
        args.output_csv = args.output_csv or f"{stem}.requests.csv"
        args.output_png = args.output_png or f"{stem}.png"
    return args


def workload(args) -> tuple[np.ndarray, list]:
    """The run's arrival offsets and prompts, drawn from --seed (the same seed gives the same load)."""
    rng = np.random.default_rng(args.seed)
    schedule = arrival_times(rng, args.target_qps, args.duration, args.num_requests, args.arrival,
                             args.burstiness)
    if len(schedule) == 0:
        raise ToolError(f"no arrivals scheduled at {args.target_qps:g} QPS (raise --duration or --target-qps)")
    return schedule, random_prompts(rng, len(schedule), args.prompt_len_min, args.prompt_len_max, args.vocab)


def measure(args, schedule, prompts) -> tuple["Runner", dict]:
    """Wait for the model, send the workload and build the report (ToolError on connection errors)."""
    decoupled = await_model("grpc", args.url, args.model, args.ready_timeout, PROG).decoupled
    runner = Runner(args, schedule, prompts, decoupled)
    asyncio.run(runner.run())
    return runner, build_report(args, runner)


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"{PROG}: {args.endpoints.describe()}", file=sys.stderr)
    measured, failed = run_guarded(PROG, lambda: measure(args, *workload(args)))
    if failed is not None:
        return failed
    runner, report = measured
    if runner.metrics_error:
        warn(f"server counters unavailable: {runner.metrics_error}")
    srv = report["server"]
    if srv.get("nv_inference_request_success") not in (None, report["completed"]):
        warn(f"the server counted {srv['nv_inference_request_success']} requests in the window, this client "
             f"{report['completed']} completed (other traffic, or failed requests the backend answered itself)")
    write_json(args.output_json, report)
    if args.output_csv:
        write_csv(args.output_csv, runner, args)
    if args.output_png and not args.no_png:
        err = plots.save_load_test(args.output_png, runner.records, runner.streaming,
                                   latency_values([r for r in runner.records if r.ok], runner.streaming), report,
                                   verdict_notes(report), args)
        if err:
            warn(f"no PNG report: {err}")
    if args.quiet:
        for note in report["client"]["notes"]:
            warn(note)
    else:
        print_summary(report)
    return EXIT_OK if report["passed"] else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
