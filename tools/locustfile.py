"""Locust load for a Triton generation model over tritonclient gRPC (closed loop; one user = one client).

Each user sends random-token prompts and fires one Locust request event per generation (request_type "grpc",
name = the model, response_time = end-to-end ms, response_length = output tokens) plus, when the model streams,
one "<model> TTFT" event per request. --host is the gRPC address (host:port; a scheme is stripped).

Headless, one machine:
    .venv/bin/locust -f tools/locustfile.py --headless -u 16 -r 4 -t 2m --host 127.0.0.1:8001 \\
        --model gpt_large --max-new-tokens 64 --slo-p99-ms 2500 --csv artifacts/locust --only-summary
Distributed (one master, workers on other machines; see docs/tools.md):
    master:  locust -f tools/locustfile.py --master --headless --expect-workers 4 -u 256 -r 16 -t 5m \\
                 --host SERVER:8001 --csv artifacts/locust
    workers: locust -f tools/locustfile.py --worker --master-host MASTER_IP
Step load: LOCUST_STEP_LOAD=USERS_PER_STEP,STEP_SECONDS,STEPS (or --step-load ...) replaces -u/-r/-t with a
staircase. On quit the master sets exit status 1 when the failure ratio exceeds --slo-fail-ratio or the p99 latency
exceeds --slo-p99-ms / --slo-ttft-p99-ms.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # gRPC's blocking calls must yield to gevent, or one user would stall the rest

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import LoadTestShape, User, events, task  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

log = logging.getLogger("locustfile")
_decoupled_cache: dict = {}


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    g = parser  # (argument groups reject Locust's include_in_web_ui)
    g.add_argument("--model", default=common.DEFAULT_MODEL, help="Triton model name", include_in_web_ui=True)
    g.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                   help="stream tokens (decoupled models only); auto: when the model is decoupled")
    g.add_argument("--max-new-tokens", type=int, default=64, help="max_tokens per request (end id ignored)",
                   include_in_web_ui=True)
    g.add_argument("--prompt-len-min", type=int, default=128, help="shortest prompt (tokens)")
    g.add_argument("--prompt-len-max", type=int, default=512, help="longest prompt (tokens)")
    g.add_argument("--vocab", type=int, default=common.DEFAULT_VOCAB, help="prompt ids drawn from [0, vocab)")
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
        client = grpcclient.InferenceServerClient(url)
        try:
            _decoupled_cache[key] = common.decoupled_from_config(client.get_model_config(model, as_json=True))
        finally:
            client.close()
    return _decoupled_cache[key]


class TritonGrpcUser(User):
    """One tritonclient gRPC client per user, one request at a time."""

    host = "127.0.0.1:8001"

    def wait_time(self):
        return self._think

    def on_start(self):
        opts = self.environment.parsed_options
        self.url = common.strip_scheme(self.host or "127.0.0.1:8001")
        self.model = opts.model
        self.max_new_tokens = opts.max_new_tokens
        self.len_min, self.len_max, self.vocab = opts.prompt_len_min, opts.prompt_len_max, opts.vocab
        self._think = opts.think_time
        self.decoupled = _is_decoupled(self.url, self.model)
        if opts.stream == "on" and not self.decoupled:
            raise RuntimeError(f"model {self.model!r} is not decoupled and cannot stream (use --stream auto)")
        self.streaming = self.decoupled and opts.stream != "off"
        self.gen = common.BlockingGenerator("grpc", self.url, self.model, self.decoupled, opts.request_timeout)
        self.outputs = common.requested_outputs(grpcclient)
        self.rng = np.random.default_rng()

    def on_stop(self):
        gen = getattr(self, "gen", None)
        if gen is not None:
            gen.close()

    @task
    def generate(self):
        prompt = common.random_prompts(self.rng, 1, self.len_min, self.len_max, self.vocab)[0]
        inputs = common.build_inputs(grpcclient, prompt, self.max_new_tokens,
                                     stream=self.streaming if self.decoupled else None)
        start = time.time()
        g = self.gen.generate(inputs, self.outputs)
        fire = self.environment.events.request.fire
        fire(request_type="grpc", name=self.model, start_time=start, response_time=(g.end_s or 0.0) * 1e3,
             response_length=g.output_tokens if g.ok else 0, url=self.url, context={"prompt_tokens": len(prompt)},
             exception=None if g.ok else RuntimeError(f"{g.error_code}: {g.error}"))
        if self.streaming and g.ok and g.first_token_s is not None:
            fire(request_type="grpc", name=f"{self.model} TTFT", start_time=start,
                 response_time=g.first_token_s * 1e3, response_length=0, url=self.url, context={}, exception=None)


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


@events.quitting.add_listener
def _slo_exit_code(environment, **_kwargs):
    """Master / standalone: exit 1 when the run breaks an SLO (Locust exits 1 on any failure by itself)."""
    opts = environment.parsed_options
    if opts is None or isinstance(environment.runner, WorkerRunner):
        return
    entry = environment.stats.get(opts.model, "grpc")
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
        ttft = environment.stats.get(f"{opts.model} TTFT", "grpc")
        if ttft.num_requests == 0:
            breaches.append("no TTFT measured (is the model streaming?)")
        elif ttft.get_response_time_percentile(0.99) > opts.slo_ttft_p99_ms:
            breaches.append(f"p99 TTFT {ttft.get_response_time_percentile(0.99):.0f} ms > {opts.slo_ttft_p99_ms:g} ms")
    for b in breaches:
        log.error("SLO breach: %s", b)
    if breaches:
        environment.process_exit_code = 1
