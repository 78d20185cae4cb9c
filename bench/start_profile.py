"""Where an engine's start goes: import, build and warmup() timed, warmup() under cProfile, and every kernel
configuration inductor times while it runs (its autotuning; none should run on a start whose compile cache already
holds every kernel). Run it twice on one compile cache to see a warm start.

    TORCHINDUCTOR_CACHE_DIR=/tmp/c TRITON_CACHE_DIR=/tmp/c/triton \
        python -m bench.start_profile model_repository/gpt_large_stream/config.pbtxt [--top 70]

Builds the engine exactly as that config.pbtxt's parameters say (bench.profile_decode's --config). Needs a GPU for
anything compiled.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

t0 = time.perf_counter()
from torch._inductor.runtime import triton_heuristics  # noqa: E402

from gptserve.engine import Engine  # noqa: E402

from .profile_decode import settings_from  # noqa: E402

IMPORT_S = time.perf_counter() - t0


def log_inductor_timings():
    """Print each kernel configuration inductor times (autotuning or coordinate-descent tuning) as it does."""
    timed = triton_heuristics.CachingAutotuner.bench

    def bench(self, launcher, *args, **kwargs):
        print("inductor times", self.fn.__name__, launcher.config, flush=True)
        return timed(self, launcher, *args, **kwargs)

    triton_heuristics.CachingAutotuner.bench = bench


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="a model's config.pbtxt")
    p.add_argument("--top", type=int, default=70)
    args = p.parse_args()
    log_inductor_timings()
    profiler = cProfile.Profile()
    t1 = time.perf_counter()
    engine = Engine(settings_from(argparse.Namespace(config=args.config)), device="cuda")
    build_s = time.perf_counter() - t1
    profiler.enable()
    t2 = time.perf_counter()
    engine.warmup()
    warmup_s = time.perf_counter() - t2
    profiler.disable()
    print(f"import {IMPORT_S:.2f} s, build {build_s:.2f} s, warmup {warmup_s:.2f} s (under cProfile)", flush=True)
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top // 2)


if __name__ == "__main__":
    main()
