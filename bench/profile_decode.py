"""Where a decode step's GPU time goes: the kernels of CUDA-graph decode steps, by total time.

    python -m gptserve.profile --preset gpt2-large --variant bf16-sdpa --batches 1,16 --output artifacts/profile

Prints one table per batch (kernel, calls per step, microseconds per step, share) and writes them as JSON.
Needs a CUDA GPU. For a timeline, run the same command under `nsys profile`.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .bench import VARIANTS, prompts
from .config import ServingConfig
from .engine import Engine


def decode_kernels(engine: Engine, batch: int, prompt_len: int, steps: int) -> dict:
    """Kernel time per decode step at `batch` rows sitting at `prompt_len` (slots prefilled first)."""
    engine.prefill(prompts(batch, prompt_len, engine.cfg.vocab_size), list(range(batch)))
    tokens = torch.zeros(batch, dtype=torch.int64, device="cuda")
    positions = torch.full((batch,), prompt_len, dtype=torch.int64, device="cuda")
    for _ in range(3):  # compile and capture this bucket outside the profile
        engine.decode_step(tokens, positions, prompt_len)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for step in range(steps):
            engine.decode_step(tokens, positions + step, prompt_len + step)
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_kernel[event.name]
            entry[0] += 1
            entry[1] += event.device_time_total
    total_us = sum(us for _, us in per_kernel.values()) / steps
    rows = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])
    return {
        "batch": batch,
        "kernel_us_per_step": total_us,
        "kernels_per_step": sum(n for n, _ in per_kernel.values()) / steps,
        "kernels": [{"name": name[:160], "calls_per_step": n / steps, "us_per_step": us / steps,
                     "share": us / steps / total_us} for name, (n, us) in rows],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-large")
    p.add_argument("--variant", default="bf16-sdpa", choices=sorted(VARIANTS))
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--output", default="artifacts/profile")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gptserve.profile needs a CUDA GPU")
    engine = Engine(ServingConfig(preset=args.preset, compile_mode="reduce-overhead", **VARIANTS[args.variant]),
                    device="cuda")
    report = {"preset": args.preset, "variant": args.variant, "device": torch.cuda.get_device_name(),
              "prompt_len": args.prompt_len, "batches": []}
    for batch in (int(b) for b in args.batches.split(",")):
        result = decode_kernels(engine, batch, args.prompt_len, args.steps)
        report["batches"].append(result)
        print(f"\nbatch {batch}: {result['kernel_us_per_step']:.0f} us of kernels per step, "
              f"{result['kernels_per_step']:.0f} kernels")
        print("| us/step | share | calls | kernel |\n|---|---|---|---|")
        for k in result["kernels"][: args.top]:
            print(f"| {k['us_per_step']:.1f} | {k['share']:.0%} | {k['calls_per_step']:.0f} | {k['name'][:90]} |")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"profile-{args.preset}-{args.variant}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
