"""Where warm-up's CUDA-graph captures spend their time: one decode step run eagerly, torch.cuda.graph's own cost
around a capture, the capture itself, and the whole capture() as warm-up calls it.

    python -m bench.capture_cost --preset gpt2-large --batches 1,16

Builds an engine compiled as the server's (reduce-overhead, one compiled block), compiles each batch by running
one step, then times at every KV length of the bucket. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from gptserve.engine import Engine
from gptserve.engine.graphs import capture
from gptserve.settings import ServingConfig

from . import header
from .engine import cuda_time


def capture_only(run, pool, kept: list) -> float:
    """A capture without torch.cuda.graph's context (no synchronize, no cache emptying): begin, run, end."""
    graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    kept.append(graph)

    def once():
        with torch.cuda.stream(side):
            graph.capture_begin(pool=pool)
            try:
                run()
            finally:
                graph.capture_end()

    return cuda_time(once)


def bucket_costs(engine: Engine, batch: int) -> dict:
    inputs = torch.zeros(2, batch, 1, dtype=torch.int64, device="cuda")
    pool = torch.cuda.graph_pool_handle()
    rows = {"eager_step": [], "graph_context": [], "capture_only": [], "capture_warm2": [], "capture_warm1": []}
    kept = []  # every graph captured into the pool stays alive: a pool whose graphs are all gone is released
    cuda_time(lambda: engine._capture_decode(inputs[0], inputs[1], engine.kv_lengths()[0]))  # compiles this batch
    for kv_len in engine.kv_lengths():
        def run():
            return engine._capture_decode(inputs[0], inputs[1], kv_len)
        rows["eager_step"].append(cuda_time(run))
        rows["graph_context"].append(cuda_time(lambda: kept.append(
            capture(lambda: torch.ones(1, device="cuda"), engine.device, pool, warm_runs=0))))
        rows["capture_only"].append(capture_only(run, pool, kept))
        for warm in (2, 1):
            rows[f"capture_warm{warm}"].append(cuda_time(lambda: kept.append(
                capture(run, engine.device, pool, warm_runs=warm))))
    return {name: round(statistics.median(values) * 1e3, 2) for name, values in rows.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-large")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    engine = Engine(ServingConfig(preset=args.preset, compile_mode="reduce-overhead", max_batch_size=max(batches)),
                    device="cuda")
    report = {**header(), "preset": args.preset,
              "kv_lengths": engine.kv_lengths(), "ms_median_per_kv_length": {}}
    with torch.no_grad():
        for batch in batches:
            report["ms_median_per_kv_length"][batch] = bucket_costs(engine, batch)
            print(batch, report["ms_median_per_kv_length"][batch], flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "capture-cost.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
