"""Where a decode step's (or a prefill's) GPU time goes, and a trace of the running configuration's decode steps.

    python -m bench.profile_decode --preset gpt2-large --variant bf16-sdpa --batches 1,16
    python -m bench.profile_decode --config model_repository/gpt_large_stream/config.pbtxt --trace
    python -m bench.profile_decode --preset gpt-large-40b --variant fp8wo-sdpa --batches 16 --prefill --max-seq-len 1280

Prints, per batch, the kernels per step and the time per kernel class (GEMM, attention, norm, elementwise, ...)
and the top kernels, and writes them as JSON under --output. --config builds the engine exactly as that model's
config.pbtxt parameters say (the running configuration); --trace also writes the torch profiler's Chrome trace
of the profiled steps (open it in chrome://tracing or Perfetto; under `nsys profile` the same command gives an
Nsight Systems timeline). --prefill profiles one prefill of each batch's prompts instead (no warm-up: prefill
runs eager), per call. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from gptserve.engine import Engine
from gptserve.settings import ServingConfig

from . import header
from .engine import VARIANTS, prompts

# kernel name patterns -> class, first match wins
KERNEL_CLASSES = [
    ("attention", r"fmha|flash|attention|sdpa|cudnn.*(att|mha)"),
    ("gemm", r"gemm|gemv|rows_linear|nvjet|cutlass|sm90_xmma|matmul|_mm_|splitk|scaled_mm|wgmma"),
    ("norm", r"norm"),
    ("reduction", r"reduce|red_|argmax|sum|softmax"),
    ("copy", r"copy|memcpy|memset|cat|index"),
    ("elementwise", r"elementwise|vectorized|pointwise|triton_poi|gelu|add|mul"),
]


def kernel_class(name: str) -> str:
    low = name.lower()
    for cls, pattern in KERNEL_CLASSES:
        if re.search(pattern, low):
            return cls
    return "other"


def settings_from(args) -> ServingConfig:
    if args.config:
        text = re.sub(r"#.*", "", Path(args.config).read_text())
        params = dict(re.findall(r'key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text))
        batch = int(re.search(r"max_batch_size:\s*(\d+)", text).group(1))
        return ServingConfig.from_parameters(params, max_batch_size=batch)
    return ServingConfig(preset=args.preset, compile_mode="reduce-overhead", max_seq_len=args.max_seq_len,
                         **VARIANTS[args.variant])


def decode_kernels(engine: Engine, batch: int, prompt_len: int, steps: int, trace: Path | None) -> dict:
    """Kernel time per decode step at `batch` rows sitting at `prompt_len` (slots prefilled first)."""
    engine.prefill(prompts(batch, prompt_len, engine.cfg.vocab_size), list(range(batch)))
    tokens = torch.zeros(batch, dtype=torch.int64, device="cuda")
    positions = torch.full((batch,), prompt_len, dtype=torch.int64, device="cuda")
    engine.decode_step(tokens, positions, prompt_len)  # warmup() captured every bucket: a replay
    return {"batch": batch, **kernel_time(
        lambda step: engine.decode_step(tokens, positions + step, prompt_len + step), steps, trace)}


def prefill_kernels(engine: Engine, batch: int, prompt_len: int, steps: int, trace: Path | None) -> dict:
    """Kernel time per prefill of `batch` prompts of `prompt_len` tokens (one call, as bench.engine times it)."""
    batch_prompts, slots = prompts(batch, prompt_len, engine.cfg.vocab_size), list(range(batch))
    engine.prefill(batch_prompts, slots)  # first call outside the profile (allocator, cuBLAS handles)
    return {"batch": batch, **kernel_time(lambda _: engine.prefill(batch_prompts, slots), steps, trace)}


def kernel_time(run, steps: int, trace: Path | None) -> dict:
    """Kernels per call of run(step) for step in range(steps), and their time: in all, per class, per kernel."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for step in range(steps):
            run(step)
        torch.cuda.synchronize()
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_kernel[event.name]
            entry[0] += 1
            entry[1] += event.device_time_total
    total_us = sum(us for _, us in per_kernel.values()) / steps
    classes: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for name, (n, us) in per_kernel.items():
        entry = classes[kernel_class(name)]
        entry[0] += n / steps
        entry[1] += us / steps
    rows = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])
    return {
        "kernel_us_per_step": total_us,
        "kernels_per_step": sum(n for n, _ in per_kernel.values()) / steps,
        "classes": {cls: {"kernels_per_step": n, "us_per_step": us} for cls, (n, us) in
                    sorted(classes.items(), key=lambda kv: -kv[1][1])},
        "kernels": [{"name": name[:160], "class": kernel_class(name), "calls_per_step": n / steps,
                     "us_per_step": us / steps, "share": us / steps / total_us} for name, (n, us) in rows],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-large")
    p.add_argument("--variant", default="bf16-sdpa", choices=sorted(VARIANTS))
    p.add_argument("--config", help="a model's config.pbtxt: profile the engine its parameters describe")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--max-seq-len", type=int, default=0, help="KV-cache positions per slot (0: the model's)")
    p.add_argument("--prefill", action="store_true", help="profile prefills of each batch, not decode steps")
    p.add_argument("--trace", action="store_true", help="also write the Chrome trace of the profiled steps")
    p.add_argument("--output", default="artifacts/profile")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.profile_decode needs a CUDA GPU (CI has none; run it on the GPU machine)")
    settings = settings_from(args)
    engine = Engine(settings, device="cuda")
    if not args.prefill:
        engine.warmup()  # compiles, and captures every bucket's CUDA graphs, outside the profile
    name = Path(args.config).parent.name if args.config else f"{args.preset}-{args.variant}"
    name += "-prefill" if args.prefill else ""
    profiled = prefill_kernels if args.prefill else decode_kernels
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    report = {**header(), "name": name, "settings": dataclasses.asdict(settings), "prompt_len": args.prompt_len,
              "batches": []}
    for batch in (int(b) for b in args.batches.split(",")):
        trace = out / f"trace-{name}-b{batch}-{stamp}.json" if args.trace else None
        result = profiled(engine, batch, args.prompt_len, args.steps, trace)
        report["batches"].append(result)
        unit = "prefill" if args.prefill else "step"
        print(f"\nbatch {batch}: {result['kernel_us_per_step']:.0f} us of kernels per {unit}, "
              f"{result['kernels_per_step']:.0f} kernels")
        print("| class | kernels/step | us/step |\n|---|---|---|")
        for cls, c in result["classes"].items():
            print(f"| {cls} | {c['kernels_per_step']:.0f} | {c['us_per_step']:.1f} |")
        print("| us/step | share | calls | class | kernel |\n|---|---|---|---|---|")
        for k in result["kernels"][: args.top]:
            print(f"| {k['us_per_step']:.1f} | {k['share']:.0%} | {k['calls_per_step']:.0f} | {k['class']} "
                  f"| {k['name'][:80]} |")
        if trace is not None:
            print(f"wrote trace {trace}")
    path = out / f"profile-{name}-{stamp}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
