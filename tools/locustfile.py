"""Locust load for a Triton generation model over tritonclient gRPC (closed loop; one user = one client).

Each user sends random-token prompts and fires one Locust request event per generation (request_type "grpc",
name = the model, response_time = end-to-end ms, response_length = output tokens), so Locust's request counts,
rates and its Aggregated row count real requests. When the model streams, each request's TTFT is kept in a
statistics table of its own (workers send it to the master with their reports), printed at the end and written
to <--csv prefix>_ttft.csv. --host is the gRPC address (host:port; a scheme is stripped); without it,
$HOST:$GRPC_PORT as every tool finds the server.

Headless, one machine:
    .venv/bin/locust -f tools/locustfile.py --headless -u 16 -r 4 -t 2m --stop-timeout 60 \\
        --model gpt_large --max-new-tokens 64 --slo-p99-ms 2500 --csv artifacts/locust --only-summary
Distributed (one master, workers on other machines; see docs/tools.md):
    master:  locust -f tools/locustfile.py --master --headless --expect-workers 4 -u 256 -r 16 -t 5m \\
                 --host SERVER:8001 --csv artifacts/locust
    workers: locust -f tools/locustfile.py --worker --master-host MASTER_IP
Step load: LOCUST_STEP_LOAD=USERS_PER_STEP,STEP_SECONDS,STEPS (or --step-load ...) replaces -u/-r/-t with a
staircase. On quit the master sets exit status 1 when the failure ratio exceeds --slo-fail-ratio or the p99 latency
exceeds --slo-p99-ms / --slo-ttft-p99-ms.

Locust prints its --help before it imports a locustfile (locustio/locust#2917), so `locust -f tools/locustfile.py
--help` cannot list this file's options; `python tools/locustfile.py --help` prints Locust's help with them, and
`python tools/locustfile.py ARGS` runs `locust -f tools/locustfile.py ARGS`.
"""
from __future__ import annotations

import csv
import logging
import os
import sys
import time

import gevent
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # gRPC's blocking calls must yield to gevent, or one user would stall the rest

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import LoadTestShape, User, events, task  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402
from locust.stats import CSV_STATS_INTERVAL_SEC, RequestStats, StatsEntry  # noqa: E402

from tools import endpoints  # noqa: E402
from tools.client import close_client, decoupled_from_config, make_client, model_config  # noqa: E402
from tools.generator import BlockingGenerator  # noqa: E402
from tools.payload import DEFAULT_MODEL, DEFAULT_VOCAB, build_inputs, random_prompts, requested_outputs  # noqa: E402

log = logging.getLogger("locustfile")
TTFT = RequestStats()  # method "TTFT", name = the model; not in environment.stats, so not counted as requests
_decoupled_cache: dict = {}
_requests = {"started": 0, "recorded": 0}  # this process's users: a difference at quit = interrupted requests
# Every user's open generator: _on_quit closes any a user left open, so that no client is first closed by garbage
# collection at exit (see tools.client.close_client) and no stream keeps its response greenlet alive.
_open_generators: set = set()


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    g = parser  # (argument groups reject Locust's include_in_web_ui)
    g.add_argument("--model", default=DEFAULT_MODEL, help="Triton model name", include_in_web_ui=True)
    g.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                   help="stream tokens (decoupled models only); auto: when the model is decoupled")
    g.add_argument("--max-new-tokens", type=int, default=64, help="max_tokens per request (end id ignored)",
                   include_in_web_ui=True)
    g.add_argument("--prompt-len-min", type=int, default=128, help="shortest prompt (tokens)")
    g.add_argument("--prompt-len-max", type=int, default=512, help="longest prompt (tokens)")
    g.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help="prompt ids drawn from [0, vocab)")
    g.add_argument("--think-time", type=float, default=0.0, help="seconds each user waits between requests")
    g.add_argument("--request-timeout", type=float, default=300.0, help="per-request timeout (s)")
    g.add_argument("--slo-fail-ratio", type=float, default=0.0,
                   help="exit 1 when failed/total requests exceeds this")
    g.add_argument("--slo-p99-ms", type=float, default=None, help="exit 1 when p99 end-to-end latency exceeds this")
    g.add_argument("--slo-ttft-p99-ms", type=float, default=None,
                   help="exit 1 when the p99 TTFT exceeds this (streaming only)")
    g.add_argument("--step-load", default=None, env_var="LOCUST_STEP_LOAD",
                   help="USERS_PER_STEP,STEP_SECONDS,STEPS: staircase load instead of -u/-r/-t "
                        "(read at start-up; env LOCUST_STEP_LOAD)")


def _is_decoupled(url: str, model: str) -> bool:
    key = (url, model)
    if key not in _decoupled_cache:
        client = make_client("grpc", url)
        try:
            _decoupled_cache[key] = decoupled_from_config(model_config(client, model))
        finally:
            close_client(client)
    return _decoupled_cache[key]


class TritonGrpcUser(User):
    """One tritonclient gRPC client per user, one request at a time."""

    host = endpoints.resolve(metrics_url="none").url  # --host wins

    def wait_time(self):
        return self._think

    def on_start(self):
        opts = self.environment.parsed_options
        self.url = endpoints.strip_scheme(self.host)
        self.model = opts.model
        self.max_new_tokens = opts.max_new_tokens
        self.len_min, self.len_max, self.vocab = opts.prompt_len_min, opts.prompt_len_max, opts.vocab
        self._think = opts.think_time
        self.decoupled = _is_decoupled(self.url, self.model)
        if opts.stream == "on" and not self.decoupled:
            raise RuntimeError(f"model {self.model!r} is not decoupled and cannot stream (use --stream auto)")
        self.streaming = self.decoupled and opts.stream != "off"
        self.gen = BlockingGenerator("grpc", self.url, self.model, self.decoupled, opts.request_timeout)
        _open_generators.add(self.gen)
        self.outputs = requested_outputs(grpcclient)
        self.rng = np.random.default_rng()

    def on_stop(self):
        gen = getattr(self, "gen", None)
        if gen is not None:
            gen.close()
            _open_generators.discard(gen)

    @task
    def generate(self):
        prompt = random_prompts(self.rng, 1, self.len_min, self.len_max, self.vocab)[0]
        inputs = build_inputs(grpcclient, prompt, self.max_new_tokens,
                              stream=self.streaming if self.decoupled else None)
        start = time.time()
        _requests["started"] += 1
        g = self.gen.generate(inputs, self.outputs)
        self.environment.events.request.fire(
            request_type="grpc", name=self.model, start_time=start, response_time=(g.end_s or 0.0) * 1e3,
            response_length=g.output_tokens if g.ok else 0, url=self.url, context={"prompt_tokens": len(prompt)},
            exception=None if g.ok else RuntimeError(f"{g.error_code}: {g.error}"))
        _requests["recorded"] += 1
        if self.streaming and g.ok and g.first_token_s is not None:
            TTFT.log_request("TTFT", self.model, g.first_token_s * 1e3, 0)


# ---------------------------------------------------------------------------------------------------- TTFT table
@events.report_to_master.add_listener
def _send_ttft(client_id, data, **_kwargs):
    data["ttft"] = TTFT.serialize_stats()  # (each entry is cleared once reported, as Locust's own)


@events.worker_report.add_listener
def _merge_ttft(client_id, data, **_kwargs):
    for item in data.get("ttft", []):
        entry = StatsEntry.unserialize(item, TTFT)
        TTFT.get(entry.name, entry.method).extend(entry)


@events.reset_stats.add_listener
def _reset_ttft(**_kwargs):
    TTFT.reset_all()


def _ttft_rows() -> list[dict]:
    rows = []
    for (name, _method), e in sorted(TTFT.entries.items()):
        rows.append({"Name": name, "Request Count": e.num_requests, "Average (ms)": round(e.avg_response_time, 1),
                     "Min (ms)": round(e.min_response_time or 0, 1), "Max (ms)": round(e.max_response_time, 1),
                     **{f"{q}% (ms)": e.get_response_time_percentile(q / 100) for q in (50, 90, 99)}})
    return rows


def _report_ttft(csv_prefix) -> None:
    rows = _ttft_rows()
    for r in rows:
        log.info("TTFT %s: %d requests, p50 %s ms, p90 %s ms, p99 %s ms", r["Name"], r["Request Count"],
                 r["50% (ms)"], r["90% (ms)"], r["99% (ms)"])
    if csv_prefix and rows:
        with open(f"{csv_prefix}_ttft.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


# ---------------------------------------------------------------------------------------------------- step load
def _step_spec():
    """The step-load spec from --step-load (argv) or LOCUST_STEP_LOAD, read when Locust imports this file."""
    spec = os.environ.get("LOCUST_STEP_LOAD")
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == "--step-load" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif arg.startswith("--step-load="):
            spec = arg.split("=", 1)[1]
    if not spec:
        return None
    try:
        users, seconds, steps = (float(x) for x in spec.split(","))
    except ValueError:
        sys.exit(f"locustfile: --step-load/LOCUST_STEP_LOAD must be USERS_PER_STEP,STEP_SECONDS,STEPS, got {spec!r}")
    return int(users), seconds, int(steps)


STEP_LOAD = _step_spec()
if STEP_LOAD:
    class StepLoadShape(LoadTestShape):
        """USERS_PER_STEP more users every STEP_SECONDS, for STEPS steps, then stop."""

        def __init__(self):
            super().__init__()
            self.users, self.seconds, self.steps = STEP_LOAD

        def tick(self):
            t = self.get_run_time()
            if t >= self.seconds * self.steps:
                return None
            return self.users * (int(t // self.seconds) + 1), max(self.users, 1)


# ---------------------------------------------------------------------------------------------------- at the end
@events.quitting.add_listener
def _on_quit(environment, **_kwargs):
    """Every process: close the generators users left open, and say how many requests were cut off at stop.
    Master / standalone: the TTFT table, and exit status 1 when the run breaks an SLO (Locust exits 1 on any
    failure by itself)."""
    for gen in list(_open_generators):
        gen.close()
    _open_generators.clear()
    interrupted = _requests["started"] - _requests["recorded"]
    if interrupted:
        log.warning("%d requests were still running when the users stopped and are not counted; give "
                    "--stop-timeout longer than a request so that they finish", interrupted)
    opts = environment.parsed_options
    if opts is None or isinstance(environment.runner, WorkerRunner):
        return
    if opts.csv_prefix:  # Locust rewrites its CSVs every second; its last pass may precede the --stop-timeout drain
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)
    _report_ttft(opts.csv_prefix)
    breaches = _slo_breaches(environment.stats.get(opts.model, "grpc"), TTFT.get(opts.model, "TTFT"), opts)
    for b in breaches:
        log.error("SLO breach: %s", b)
    if breaches:
        environment.process_exit_code = 1


def _slo_breaches(entry, ttft, opts) -> list[str]:
    breaches = []
    if entry.num_requests == 0:
        breaches.append("no requests completed")
    elif entry.fail_ratio > opts.slo_fail_ratio:
        breaches.append(f"failure ratio {entry.fail_ratio:.2%} > {opts.slo_fail_ratio:.2%}")
    if opts.slo_p99_ms is not None and entry.num_requests:
        p99 = entry.get_response_time_percentile(0.99)
        if p99 > opts.slo_p99_ms:
            breaches.append(f"p99 latency {p99:.0f} ms > {opts.slo_p99_ms:g} ms")
    if opts.slo_ttft_p99_ms is not None:
        if ttft.num_requests == 0:
            breaches.append("no TTFT measured (is the model streaming?)")
        elif ttft.get_response_time_percentile(0.99) > opts.slo_ttft_p99_ms:
            breaches.append(f"p99 TTFT {ttft.get_response_time_percentile(0.99):.0f} ms > {opts.slo_ttft_p99_ms:g} ms")
    return breaches


def main() -> int:
    """`python tools/locustfile.py ARGS`: Locust's --help with this file's options, else Locust on this file."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        from locust.argument_parser import get_parser

        get_parser().print_help()  # fires init_command_line_parser: _add_arguments is registered by now
        return 0
    os.execv(sys.executable, [sys.executable, "-m", "locust", "-f", os.path.abspath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
