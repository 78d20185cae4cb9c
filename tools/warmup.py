#!/usr/bin/env python3
"""Warm-up and verification benchmark against a running Triton server (release checklist step 1).

Steps: wait until the model is READY; send the same greedy request twice and check both give the same tokens;
drive every batch-size bucket (1, 2, 4, 8, 16 concurrent requests of --prompt-len tokens, --warmup untimed and
--iters timed rounds each); read the server's optimized-vs-reference max_abs_diff gauge; measure the energy over
the timed window (Triton's nv_energy_consumption, else local NVML) for tokens per joule.

Exit status: 0 every check passed, 1 a check failed, 2 usage or connection error (server unreachable or not
ready within --ready-timeout). Metric definitions: docs/tools.md.

    .venv/bin/python tools/warmup.py --url 127.0.0.1:8001 --iters 6 --warmup 2 \\
        --output-json artifacts/warmup.json
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import EXIT_CHECK_FAILED, EXIT_OK, ToolError  # noqa: E402

PROG = "warmup"
BUCKETS = (1, 2, 4, 8, 16)


class Driver:
    """A pool of threads, each with its own client, sending `n` requests at once."""

    def __init__(self, args, decoupled: bool, workers: int):
        self.args = args
        self.decoupled = decoupled
        self.local = threading.local()
        self.generators = []
        self.lock = threading.Lock()
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="warmup")
        self.module = common.client_module(args.protocol)
        self.outputs = common.requested_outputs(self.module)

    def _generator(self) -> common.BlockingGenerator:
        gen = getattr(self.local, "gen", None)
        if gen is None:
            gen = common.BlockingGenerator(self.args.protocol, self.args.url, self.args.model, self.decoupled,
                                           self.args.request_timeout)
            self.local.gen = gen
            with self.lock:
                self.generators.append(gen)
        return gen

    def inputs(self, prompt) -> list:
        return common.build_inputs(self.module, prompt, self.args.max_tokens, ignore_eos=True, temperature=0.0,
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


def run(args) -> dict:
    client = common.make_client(args.protocol, args.url)
    try:
        ready_s = common.wait_until_ready(client, args.model, args.ready_timeout)
        try:
            decoupled = common.decoupled_from_config(common.model_config(client, args.model))
        except Exception as exc:
            raise ToolError(f"cannot read the configuration of {args.model!r}: {common.one_line(exc)}") from None
    finally:
        client.close()
    if decoupled and args.protocol != "grpc":
        raise ToolError(f"model {args.model!r} is decoupled (streaming): use --protocol grpc")
    rng = np.random.default_rng(args.seed)
    driver = Driver(args, decoupled, max(args.batch_sizes))
    checks: dict[str, bool] = {"ready": True}
    notes: list[str] = []
    try:
        # -- determinism: the same greedy request twice -------------------------------------------------------
        probe = rng.integers(0, args.vocab, size=args.prompt_len, dtype=np.int32)
        (first, _), = driver.round([probe])[0]
        (second, _), = driver.round([probe])[0]
        deterministic = first.ok and second.ok and first.output_ids == second.output_ids
        determinism = {"passed": deterministic, "tokens_first": len(first.output_ids),
                       "tokens_second": len(second.output_ids),
                       "error": first.error or second.error or None}
        if not deterministic:
            mismatch = next((i for i, (a, b) in enumerate(zip(first.output_ids, second.output_ids)) if a != b),
                            min(len(first.output_ids), len(second.output_ids)))
            determinism["first_mismatch_at"] = mismatch
        checks["deterministic"] = deterministic

        # -- untimed warm-up rounds for every bucket ----------------------------------------------------------
        failures = []
        for b in args.batch_sizes:
            for _ in range(args.warmup):
                results, _ = driver.round([rng.integers(0, args.vocab, size=args.prompt_len, dtype=np.int32)
                                           for _ in range(b)])
                failures += [g for g, _ in results if not g.ok]

        # -- timed rounds: one energy / counter window over all of them --------------------------------------
        energy = common.EnergyMeter(args.metrics_url)
        before_all = common.try_scrape(args.metrics_url)
        energy.start()
        window_start = time.perf_counter()
        per_bucket = {}
        total_tokens = 0
        wrong_counts = 0
        for b in args.batch_sizes:
            snap0 = common.try_scrape(args.metrics_url)
            latencies, rounds, tokens, busy = [], [], 0, 0.0
            for _ in range(args.iters):
                prompts = [rng.integers(0, args.vocab, size=args.prompt_len, dtype=np.int32) for _ in range(b)]
                results, seconds = driver.round(prompts)
                rounds.append(seconds * 1e3)
                busy += seconds
                for gen, done in results:
                    if gen.ok:
                        latencies.append(done * 1e3)
                        tokens += gen.output_tokens
                        wrong_counts += gen.output_tokens != args.max_tokens
                    else:
                        failures.append(gen)
            snap1 = common.try_scrape(args.metrics_url)
            total_tokens += tokens
            per_bucket[str(b)] = {
                "batch_size": b,
                "requests": b * args.iters,
                "latency_ms": common.summarize(latencies),
                "round_ms": common.summarize(rounds),
                "output_tokens": tokens,
                "output_tokens_per_s": tokens / busy if busy else None,
                "server_batch_size_mean": common.histogram_delta_mean(snap0, snap1, "gpt_batch_size",
                                                                      model=args.model)
                if snap0 and snap1 else None,
            }
        window = time.perf_counter() - window_start
        joules = energy.stop()
        after_all = None
        if before_all is not None:
            try:
                after_all = common.scrape_settled(args.metrics_url, ("gpt_generated_tokens_total",),
                                                  {"model": args.model})
            except ToolError:
                pass
    finally:
        driver.close()

    tpj, tpj_reason = common.tokens_per_joule(total_tokens, joules, energy.reason)
    checks["all_requests_succeeded"] = not failures
    checks["output_tokens_as_requested"] = wrong_counts == 0

    # -- max_abs_diff gauge ---------------------------------------------------------------------------------
    max_abs_diff, diff_reason = None, None
    snap = after_all or common.try_scrape(args.metrics_url)
    if snap is None:
        diff_reason = (f"metrics endpoint {args.metrics_url} unreachable" if args.metrics_url
                       else "no metrics endpoint (--metrics-url none)")
    else:
        max_abs_diff = snap.sum("gpt_max_abs_diff", model=args.model)
        if max_abs_diff is None:
            diff_reason = f"the server exports no gpt_max_abs_diff{{model=\"{args.model}\"}}"
        elif not math.isfinite(max_abs_diff):
            diff_reason = "the server's reference probe failed (non-finite max_abs_diff)"
    checks["max_abs_diff_reported"] = max_abs_diff is not None and math.isfinite(max_abs_diff)
    if args.max_abs_diff_tol is not None:
        checks["max_abs_diff_within_tol"] = checks["max_abs_diff_reported"] and max_abs_diff <= args.max_abs_diff_tol
    if diff_reason:
        notes.append(diff_reason)

    server = {}
    if before_all is not None and after_all is not None:
        server = common.server_counter_deltas(before_all, after_all, args.model)
    errors = {}
    for g in failures:
        errors[g.error_code] = errors.get(g.error_code, 0) + 1
    passed = all(checks.values())
    return {
        "tool": PROG,
        "timestamp": common.utc_now(),
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
        "server": server,
        "checks": checks,
        "notes": notes,
        "passed": passed,
    }


def print_summary(r: dict, file=sys.stdout) -> None:
    print(f"== {PROG}: {r['model']} ({r['protocol']}, prompt {r['config']['prompt_len']}, "
          f"max_tokens {r['config']['max_tokens']}) ==", file=file)
    print(f"  {'batch':>5} {'p50 ms':>10} {'p90 ms':>10} {'p99 ms':>10} {'mean ms':>10} {'tok/s':>10} "
          f"{'srv batch':>9}", file=file)
    for b in r["batch_sizes"].values():
        lat = b["latency_ms"]

        def f(v):
            return "n/a" if v is None else f"{v:.1f}"

        print(f"  {b['batch_size']:>5} {f(lat['p50']):>10} {f(lat['p90']):>10} {f(lat['p99']):>10} "
              f"{f(lat['mean']):>10} {f(b['output_tokens_per_s']):>10} {f(b['server_batch_size_mean']):>9}",
              file=file)
    tpj = r["tokens_per_joule"]
    print(f"  output tokens/s over the window: {r['output_tokens_per_s']:.1f}", file=file)
    print(f"  tokens_per_joule: {'null (' + r['tokens_per_joule_reason'] + ')' if tpj is None else f'{tpj:.3f}'}",
          file=file)
    print(f"  max_abs_diff: {r['max_abs_diff'] if r['max_abs_diff'] is not None else 'null'}", file=file)
    for name, ok in r["checks"].items():
        print(f"  check {name}: {'ok' if ok else 'FAILED'}", file=file)
    if r["first_error"]:
        print(f"  first error: {r['first_error']}", file=file)
    print(f"  result: {'PASSED' if r['passed'] else 'FAILED'}", file=file)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Exit status: 0 passed, 1 a check failed, 2 usage or connection error.")
    p.add_argument("--url", default=None, help="server host:port (scheme ignored) [127.0.0.1:8001 grpc, :8000 http]")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--metrics-url", default=None, help="Prometheus endpoint [http://<url host>:8002/metrics]")
    p.add_argument("--model", default=common.DEFAULT_MODEL)
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for READY")
    p.add_argument("--request-timeout", type=float, default=300.0, help="per-request timeout (s)")
    p.add_argument("--iters", type=int, default=6, help="timed rounds per batch size")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per batch size first")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens of every request")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (end id ignored)")
    p.add_argument("--batch-sizes", default=",".join(map(str, BUCKETS)),
                   help="comma list of concurrent request counts")
    p.add_argument("--max-abs-diff-tol", type=float, default=None,
                   help="fail when the server's max_abs_diff exceeds this (default: report only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=common.DEFAULT_VOCAB, help="prompt ids are drawn from [0, vocab)")
    p.add_argument("--output-json", default=None)
    p.add_argument("--quiet", action="store_true", help="no summary on stdout")
    args = p.parse_args(argv)
    try:
        args.batch_sizes = tuple(int(x) for x in args.batch_sizes.split(",") if x.strip())
    except ValueError:
        p.error("--batch-sizes must be a comma list of integers")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes must hold integers >= 1")
    if args.iters < 1 or args.warmup < 0 or args.prompt_len < 1 or args.max_tokens < 1:
        p.error("need --iters >= 1, --warmup >= 0, --prompt-len >= 1, --max-tokens >= 1")
    args.url = common.server_url(args.url, args.protocol)
    args.metrics_url = common.metrics_url(args.metrics_url, args.url)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report, failed = common.run_guarded(PROG, run, args)
    if failed is not None:
        return failed
    common.write_json(args.output_json, report)
    if not args.quiet:
        print_summary(report)
    return EXIT_OK if report["passed"] else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
