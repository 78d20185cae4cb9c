"""The in-flight scheduler in-process, without Triton: how close its token rate comes to the engine's own.

    python -m bench.scheduler --preset gpt2-large --concurrency 16 --requests 64

Keeps --concurrency streaming requests in flight (prompts of --prompt-len-min..max tokens, --new-tokens each,
greedy), with sinks that only count, and reports output tokens per second and the mean step time beside the
engine's own decode step at the same batch. The gap is the scheduler's host work; the Triton numbers
(tools/compare_models.py) add the python backend's IPC on top.
"""
from __future__ import annotations

import argparse
import json
import random
import threading
import time

import torch

from gptserve.engine import Engine
from gptserve.serving import GenerationRequest, Scheduler
from gptserve.serving.events import Failure, Final
from gptserve.settings import ServingConfig


class CountingSink:
    def __init__(self, on_done):
        self.tokens, self.first, self.on_done, self.t0 = 0, None, on_done, time.perf_counter()

    def deliver(self, event):
        if self.first is None:
            self.first = time.perf_counter() - self.t0
        self.tokens += len(getattr(event, "ids", ()))
        if isinstance(event, (Final, Failure)):
            self.on_done(self)

    def is_cancelled(self) -> bool:
        return False


def engine_step_ms(engine: Engine, batch: int, position: int, steps: int = 50) -> float:
    tokens = torch.zeros(batch, dtype=torch.int64, device=engine.device)
    positions = torch.full((batch,), position, dtype=torch.int64, device=engine.device)
    for _ in range(3):
        engine.decode_step(tokens, positions, position)
    engine.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.decode_step(tokens, positions, position).argmax(-1)
    engine.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-large")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-len-min", type=int, default=128)
    p.add_argument("--prompt-len-max", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--delivery-threads", type=int, default=ServingConfig.delivery_threads)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = Engine(ServingConfig(preset=args.preset), device=device)
    engine.warmup()
    settings = ServingConfig(delivery_threads=args.delivery_threads)
    scheduler = Scheduler(lambda: engine, settings).start(timeout=600)
    rng = random.Random(0)
    done, lock, finished = [], threading.Lock(), threading.Event()
    submitted = 0

    def submit():
        nonlocal submitted
        n = rng.randint(args.prompt_len_min, args.prompt_len_max)
        req = GenerationRequest(prompt_ids=tuple(rng.randrange(256) for _ in range(n)), max_tokens=args.new_tokens,
                                end_id=-1, stream=True)
        submitted += 1
        scheduler.submit(req, CountingSink(on_done))

    def on_done(sink):
        with lock:
            done.append(sink)
            if submitted < args.requests:
                submit()
            elif len(done) == args.requests:
                finished.set()

    t0 = time.perf_counter()
    with lock:
        for _ in range(min(args.concurrency, args.requests)):
            submit()
    finished.wait()
    wall = time.perf_counter() - t0
    scheduler.stop()
    tokens = sum(s.tokens for s in done)
    report = {
        "preset": args.preset, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "concurrency": args.concurrency, "requests": args.requests, "new_tokens": args.new_tokens,
        "delivery_threads": args.delivery_threads, "wall_s": wall, "output_tok_s": tokens / wall,
        "mean_step_ms": wall / (tokens / args.concurrency) * 1e3,
        "engine_decode_step_ms": engine_step_ms(engine, args.concurrency, args.prompt_len_max),
        "ttft_ms_p50": sorted(s.first for s in done)[len(done) // 2] * 1e3,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
