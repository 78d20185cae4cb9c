#!/usr/bin/env python3
"""Warm-up and verification benchmark against a running Triton server (release checklist step 1).

Steps: wait until the model is READY; send the same greedy request twice and check both give the same tokens;
drive every batch-size bucket (by default 1, 2, 4, ... concurrent requests of --prompt-len tokens, up to the
model's max_batch_size; --warmup untimed and --iters timed rounds each); read the server's optimized-vs-reference
max_abs_diff gauge; measure the energy over the timed window (Triton's nv_energy_consumption, else local NVML) for
tokens per joule.

Exit status: 0 every check passed, 1 a check failed, 2 usage or connection error (server unreachable or not
ready within --ready-timeout). Metric definitions: docs/tools.md.

    .venv/bin/python tools/warmup.py --url 127.0.0.1:8001 --iters 6 --warmup 2 \\
        --output-json artifacts/warmup.json
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import sys
import threading
import time

import numpy as np

from tools import endpoints
from tools.cli import EXIT_CHECK_FAILED, EXIT_OK, ToolError, run_guarded, utc_now, verdict_line, write_json
from tools.client import client_module
from tools.energy import EnergyMeter, tokens_per_joule
from tools.generator import BlockingGenerator
from tools.metrics import histogram_delta_mean, scrape, scrape_settled, server_counter_deltas, try_scrape
from tools.payload import DEFAULT_MODEL, DEFAULT_VOCAB, build_inputs, requested_outputs
from tools.readiness import await_model
from tools.stats import summarize

PROG = "warmup"


def default_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... below max_batch_size, then max_batch_size itself (1 alone for a model that does not batch)."""
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    return (*sizes, max(max_batch_size, 1))


class Driver:
    """A pool of threads, each with its own client, sending `n` requests at once."""

    def __init__(self, args, decoupled: bool, workers: int):
        self.args = args
        self.decoupled = decoupled
        self.local = threading.local()
        self.generators = []
        self.lock = threading.Lock()
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="warmup")
        self.module = client_module(args.protocol)
        self.outputs = requested_outputs(self.module)

    def _generator(self) -> BlockingGenerator:
        gen = getattr(self.local, "gen", None)
        if gen is None:
            gen = BlockingGenerator(self.args.protocol, self.args.url, self.args.model, self.decoupled,
                                    self.args.request_timeout)
            self.local.gen = gen
            with self.lock:
                self.generators.append(gen)
        return gen

    def inputs(self, prompt) -> list:
        return build_inputs(self.module, prompt, self.args.max_tokens, ignore_eos=True, temperature=0.0,
                            stream=False if self.decoupled else None)

    def _one(self, inputs, start: float):
        gen = self._generator().generate(inputs, self.outputs)
        return gen, time.perf_counter() - start

    def round(self, prompts) -> tuple[list, float]:
        """Send every prompt at once; ([(Generation, seconds from the round's start)], round seconds)."""
        inputs = [self.inputs(p) for p in prompts]
        start = time.perf_counter()
        futures = [self.pool.submit(self._one, x, start) for x in inputs]
        results = [f.result() for f in futures]
        return results, time.perf_counter() - start

    def close(self):
        self.pool.shutdown(wait=True)
        for gen in self.generators:
            gen.close()


def determinism_probe(driver: Driver, rng, args) -> dict:
    """The same greedy request twice: both must succeed with the same tokens."""
    probe = rng.integers(0, args.vocab, size=args.prompt_len, dtype=np.int32)
    (first, _), = driver.round([probe])[0]
    (second, _), = driver.round([probe])[0]
    out = {"passed": first.ok and second.ok and first.output_ids == second.output_ids,
           "tokens_first": len(first.output_ids), "tokens_second": len(second.output_ids),
           "error": first.error or second.error or None}
    if not out["passed"]:
        out["first_mismatch_at"] = next(
            (i for i, (a, b) in enumerate(zip(first.output_ids, second.output_ids)) if a != b),
            min(len(first.output_ids), len(second.output_ids)))
    return out


def timed_bucket(driver: Driver, rng, args, b: int, failures: list) -> dict:
    """--iters rounds of b requests at once; the bucket's statistics (failed Generations go to `failures`)."""
    snap0 = try_scrape(args.metrics_url)
    latencies, rounds, tokens, busy, wrong = [], [], 0, 0.0, 0
    for _ in range(args.iters):
        results, seconds = driver.round([rng.integers(0, args.vocab, size=args.prompt_len, dtype=np.int32)
                                         for _ in range(b)])
        rounds.append(seconds * 1e3)
        busy += seconds
        for gen, done in results:
            if gen.ok:
                latencies.append(done * 1e3)
                tokens += gen.output_tokens
                wrong += gen.output_tokens != args.max_tokens
            else:
                failures.append(gen)
    snap1 = try_scrape(args.metrics_url)
    return {
        "batch_size": b,
        "requests": b * args.iters,
        "latency_ms": summarize(latencies),
        "round_ms": summarize(rounds),
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / busy if busy else None,
        "server_batch_size_mean": histogram_delta_mean(snap0, snap1, "gpt_batch_size", model=args.model)
        if snap0 and snap1 else None,
        "wrong_token_counts": wrong,
    }


def read_max_abs_diff(snap, args) -> tuple:
    """(the server's gpt_max_abs_diff for the model, None) or (None, why it is not known)."""
    if snap is None:
        if not args.metrics_url:
            return None, "no metrics endpoint (--metrics-url none)"
        try:
            snap = scrape(args.metrics_url)
        except ToolError as exc:
            return None, str(exc)
    value = snap.sum("gpt_max_abs_diff", model=args.model)
    if value is None:
        return None, f"the server exports no gpt_max_abs_diff{{model=\"{args.model}\"}}"
    if not math.isfinite(value):
        return None, "the server's reference probe failed (non-finite max_abs_diff)"
    return value, None


def judge(args, determinism: dict, failures: list, requests: int, wrong_counts: int, max_abs_diff,
          diff_reason) -> dict:
    """{check: None when it passed, else the reason it failed}."""
    first = failures[0] if failures else None
    checks = {
        "ready": None,
        "deterministic": None if determinism["passed"] else (
            f"a probe request failed: {determinism['error']}" if determinism["error"] else
            f"the same greedy request gave different tokens (first difference at token "
            f"{determinism['first_mismatch_at']}; {determinism['tokens_first']} vs {determinism['tokens_second']} "
            "tokens)"),
        "all_requests_succeeded": None if not failures else
        f"{len(failures)} of {requests} requests failed; first: {first.error_code}: {first.error}",
        "output_tokens_as_requested": None if not wrong_counts else
        f"{wrong_counts} requests returned a token count other than --max-tokens {args.max_tokens}",
        "max_abs_diff_reported": diff_reason,
    }
    if args.max_abs_diff_tol is not None:
        checks["max_abs_diff_within_tol"] = diff_reason or (
            None if max_abs_diff <= args.max_abs_diff_tol else
            f"max_abs_diff {max_abs_diff:.4g} > --max-abs-diff-tol {args.max_abs_diff_tol:g}")
    return checks


def run(args) -> dict:
    ready_s, decoupled, max_batch_size = await_model(args.protocol, args.url, args.model, args.ready_timeout, PROG)
    if decoupled and args.protocol != "grpc":
        raise ToolError(f"model {args.model!r} is decoupled (streaming): use --protocol grpc")
    args.batch_sizes = args.batch_sizes or default_batch_sizes(max_batch_size)
    rng = np.random.default_rng(args.seed)
    driver = Driver(args, decoupled, max(args.batch_sizes))
    failures: list = []
    try:
        determinism = determinism_probe(driver, rng, args)
        for b in args.batch_sizes:  # untimed warm-up rounds
            for _ in range(args.warmup):
                results, _ = driver.round([rng.integers(0, args.vocab, size=args.prompt_len, dtype=np.int32)
                                           for _ in range(b)])
                failures += [g for g, _ in results if not g.ok]
        # timed rounds: one energy and counter window over all of them
        energy = EnergyMeter(args.metrics_url)
        before_all = try_scrape(args.metrics_url)
        energy.start()
        window_start = time.perf_counter()
        per_bucket = {str(b): timed_bucket(driver, rng, args, b, failures) for b in args.batch_sizes}
        window = time.perf_counter() - window_start
        joules = energy.stop()
        after_all = None
        if before_all is not None:
            try:
                after_all = scrape_settled(args.metrics_url, ("gpt_generated_tokens_total",), {"model": args.model})
            except ToolError:
                pass
    finally:
        driver.close()

    total_tokens = sum(b["output_tokens"] for b in per_bucket.values())
    wrong_counts = sum(b.pop("wrong_token_counts") for b in per_bucket.values())
    requests = sum(b * (args.warmup + args.iters) for b in args.batch_sizes)
    tpj, tpj_reason = tokens_per_joule(total_tokens, joules, energy.reason)
    max_abs_diff, diff_reason = read_max_abs_diff(after_all, args)
    reasons = judge(args, determinism, failures, requests, wrong_counts, max_abs_diff, diff_reason)
    errors: dict = {}
    for g in failures:
        errors[g.error_code] = errors.get(g.error_code, 0) + 1
    return {
        "tool": PROG,
        "timestamp": utc_now(),
        "model": args.model,
        "url": args.url,
        "protocol": args.protocol,
        "metrics_url": args.metrics_url,
        "decoupled": decoupled,
        "server_ready_wait_s": ready_s,
        "config": {"iters": args.iters, "warmup": args.warmup, "prompt_len": args.prompt_len,
                   "max_tokens": args.max_tokens, "batch_sizes": list(args.batch_sizes), "seed": args.seed,
                   "max_abs_diff_tol": args.max_abs_diff_tol},
        "batch_sizes": per_bucket,
        "window_s": window,
        "total_output_tokens": total_tokens,
        "output_tokens_per_s": total_tokens / window if window else None,
        "energy_j": joules,
        "energy_source": energy.source if joules is not None else None,
        "tokens_per_joule": tpj,
        "tokens_per_joule_reason": tpj_reason,
        "max_abs_diff": max_abs_diff,
        "max_abs_diff_reason": diff_reason,
        "determinism": determinism,
        "failed_requests": len(failures),
        "failed_by_code": errors,
        "first_error": failures[0].error if failures else None,
        "server": server_counter_deltas(before_all, after_all, args.model) if after_all is not None else {},
        "checks": {name: reason is None for name, reason in reasons.items()},
        "check_failures": {name: reason for name, reason in reasons.items() if reason is not None},
        "passed": all(reason is None for reason in reasons.values()),
    }


def _f(v):
    return "n/a" if v is None else f"{v:.1f}"


def print_summary(r: dict, file=sys.stdout) -> None:
    print(f"== {PROG}: {r['model']} ({r['protocol']}, prompt {r['config']['prompt_len']}, "
          f"max_tokens {r['config']['max_tokens']}) ==", file=file)
    print(f"  {'batch':>5} {'p50 ms':>10} {'p90 ms':>10} {'p99 ms':>10} {'mean ms':>10} {'tok/s':>10} "
          f"{'srv batch':>9}", file=file)
    for b in r["batch_sizes"].values():
        lat = b["latency_ms"]
        print(f"  {b['batch_size']:>5} {_f(lat['p50']):>10} {_f(lat['p90']):>10} {_f(lat['p99']):>10} "
              f"{_f(lat['mean']):>10} {_f(b['output_tokens_per_s']):>10} {_f(b['server_batch_size_mean']):>9}",
              file=file)
    tpj = r["tokens_per_joule"]
    print(f"  output tokens/s over the window: {_f(r['output_tokens_per_s'])}", file=file)
    print(f"  tokens_per_joule: {'null (' + r['tokens_per_joule_reason'] + ')' if tpj is None else f'{tpj:.3f}'}",
          file=file)
    print(f"  max_abs_diff: {r['max_abs_diff'] if r['max_abs_diff'] is not None else 'null'}", file=file)
    for name, ok in r["checks"].items():
        print(f"  check {name}: {'ok' if ok else 'FAILED: ' + r['check_failures'][name]}", file=file)
    print(f"  {verdict_line(r['passed'])}", file=file)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Exit status: 0 passed, 1 a check failed, 2 usage or connection error.")
    endpoints.add_arguments(p, "gRPC (or, with --protocol http, HTTP)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for READY")
    p.add_argument("--request-timeout", type=float, default=300.0, help="per-request timeout (s)")
    p.add_argument("--iters", type=int, default=6, help="timed rounds per batch size")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per batch size first")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens of every request")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (end id ignored)")
    p.add_argument("--batch-sizes", default="auto",
                   help="comma list of concurrent request counts; auto: 1, 2, 4, ... up to the model's "
                        "max_batch_size, and that size (from the server's model configuration)")
    p.add_argument("--max-abs-diff-tol", type=float, default=None,
                   help="fail when the server's max_abs_diff exceeds this (default: report only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=DEFAULT_VOCAB, help="prompt ids are drawn from [0, vocab)")
    p.add_argument("--output-json", default=None)
    p.add_argument("--quiet", action="store_true", help="no summary on stdout")
    args = p.parse_args(argv)
    if args.batch_sizes == "auto":
        args.batch_sizes = ()  # run() reads the model's max_batch_size
    else:
        try:
            args.batch_sizes = tuple(int(x) for x in args.batch_sizes.split(",") if x.strip())
        except ValueError:
            p.error("--batch-sizes must be auto or a comma list of integers")
        if not args.batch_sizes or min(args.batch_sizes) < 1:
            p.error("--batch-sizes must hold integers >= 1")
    if args.iters < 1 or args.warmup < 0 or args.prompt_len < 1 or args.max_tokens < 1:
        p.error("need --iters >= 1, --warmup >= 0, --prompt-len >= 1, --max-tokens >= 1")
    endpoints.resolve_args(p, args, args.protocol)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"{PROG}: {args.endpoints.describe()}", file=sys.stderr)
    report, failed = run_guarded(PROG, run, args)
    if failed is not None:
        return failed
    write_json(args.output_json, report)
    if not args.quiet:
        print_summary(report)
    return EXIT_OK if report["passed"] else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
