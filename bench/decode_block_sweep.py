"""Time the persistent decode block (gptserve.engine.decode_block) against the five kernels it replaces: a batch-1
decode step's blocks (a preset's every layer, its own weights and cache, so weights come from HBM as in a step),
one after another, replayed from a CUDA graph.

    python -m bench.decode_block_sweep [--preset gpt2-large] [--weights bf16,fp8] [--position 1152] [--output DIR]

Per weight format: the ops (rows_linear with its cache write, decode_attention, three rows_linear: the compiled
step's kernels before decode_linears=block), the kernel one launch a phase (no barriers), and the persistent
kernel at its plan and over a grid of (CHUNK_BYTES, WARPS). Each variant is checked against the ops on
the first block before it is timed. Microseconds for all the blocks, and GB/s of their weights and the cache they
read. Needs a CUDA GPU and triton.
"""
from __future__ import annotations

import argparse
import itertools

import torch

from gptserve.engine import decode_attention as da
from gptserve.engine import decode_block as db
from gptserve.engine.config import PRESETS
from gptserve.engine.fp8 import Fp8Converter
from gptserve.engine.model import Block

from . import header
from .sweep import relative_error, write_report

GRID = list(itertools.product((8192, 16384), (8, 16))) + [(4096, 8), (32768, 8)]
PHASES = ("qkv", "attention", "attn_proj", "fc", "mlp_proj")


def blocks(preset: str, weights: str, cache_len: int, gen: torch.Generator, count: int | None = None) -> list[tuple]:
    """Every layer's (or the first `count` layers') (norms, linears, eps, k_cache, v_cache): GPT-2-like random
    weights, a random cache."""
    cfg = PRESETS[preset]
    out = []
    for _ in range(count or cfg.n_layer):
        block = Block(cfg).to(device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            for name, p in block.named_parameters():
                p.copy_(torch.randn(p.shape, device="cuda", generator=gen) * (0.02 if p.dim() == 2 else 0.1)
                        + (1.0 if ".ln_" in f".{name}" and name.endswith("weight") else 0.0))
        if weights != "bf16":
            Fp8Converter({"fp8": "weight-only", "int8": "int8-weight-only"}[weights]).block(block)
        k, v = (torch.randn(1, cfg.n_head, cache_len, cfg.head_dim, device="cuda", generator=gen).to(torch.bfloat16)
                for _ in range(2))
        out.append((*db.block_tensors(block), k, v))
    return out


def step_bytes(layers: list[tuple], position: int) -> int:
    """Bytes a step reads: every layer's weights (and scales, biases, norms) and its cache up to position."""
    total = 0
    for norms, linears, _, k, _ in layers:
        total += sum(t.numel() * t.element_size() for t in [*norms, *linears] if t is not None)
        total += 2 * k[:, :, :position + 1].numel() * k.element_size()
    return total


def phase_times(run) -> dict:
    """Mean microseconds of each phase's launch, from a profile of run() (one launch a phase, in phase order)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    times = [e.device_time for e in prof.events() if "decode_block_kernel" in e.name and e.device_time > 0]
    assert len(times) % len(PHASES) == 0, len(times)
    return {name: round(sum(times[i::len(PHASES)]) / (len(times) // len(PHASES)), 2) for i, name in enumerate(PHASES)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-large")
    p.add_argument("--weights", default="bf16,fp8")
    p.add_argument("--position", type=int, default=1152, help="the row's position (prompt 1024, 256 new: mid-run)")
    p.add_argument("--cache-len", type=int, default=1280)
    p.add_argument("--output", default="artifacts/bench")
    args = p.parse_args()
    from triton.testing import do_bench_cudagraph

    report = {**header(), "preset": args.preset, "position": args.position, "cache_len": args.cache_len,
              "programs": db.sm_count(0), "plan": [db.CHUNK_BYTES, db.WARPS], "results": {}}
    positions = torch.tensor([args.position], device="cuda")
    for weights in args.weights.split(","):
        gen = torch.Generator(device="cuda").manual_seed(0)
        layers = blocks(args.preset, weights, args.cache_len, gen)
        x0 = torch.randn(1, PRESETS[args.preset].n_embd, device="cuda", generator=gen).to(torch.bfloat16)
        gigabytes = step_bytes(layers, args.position) / 1e9

        def ops(x):
            for norms, linears, eps, k, v in layers:
                x = db.reference(x, norms, linears, eps, k, v, positions)
            return x

        def kernel(x, **options):
            for norms, linears, eps, k, v in layers:
                x = db.launch(x, norms, linears, eps, k, v, positions, **options)
            return x

        variants = {"ops": None, "phase_launches": {"phase_launches": True},
                    **{f"persistent {c}": {"config": c} for c in GRID}}  # name: launch() options (None: the ops)
        norms, linears, eps, k, v = layers[0]
        want = db.reference(x0, norms, linears, eps, k, v, positions)
        counters = da.arrivals(x0.device, 0)
        rows = []
        for name, options in variants.items():
            try:  # the first block, checked
                got = (db.reference(x0, norms, linears, eps, k, v, positions) if options is None else
                       db.launch(x0, norms, linears, eps, k, v, positions, **options))
                torch.cuda.synchronize()
            except Exception as exc:  # out of registers or shared memory: not a candidate
                rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            if counters.any():  # a barrier wait timed out: programs not all resident; timing it would take hours
                rows.append({"variant": name, "error": f"barrier timeouts: {counters.nonzero().tolist()}"})
                counters.zero_()
                continue
            error = relative_error(got, want)
            us = do_bench_cudagraph(lambda: ops(x0) if options is None else kernel(x0, **options), rep=100) * 1e3
            rows.append({"variant": name, "us": round(us, 1), "GB/s": round(gigabytes / us * 1e6),
                         "relative_error": round(error, 5)})
            print(f"{weights:5s} {name:32s} {us:8.1f} us  {gigabytes / us * 1e6:6.0f} GB/s  error {error:.4f}",
                  flush=True)
        phase_us = phase_times(lambda: kernel(x0, phase_launches=True))
        print(f"{weights:5s} one launch a phase, us a block: " + ", ".join(f"{p} {t:.1f}" for p, t in phase_us.items()))
        report["results"][weights] = {"gigabytes": gigabytes, "rows": rows, "phase_us_a_block": phase_us}
        del layers
        torch.cuda.empty_cache()
    write_report(report, args.output, f"decode-block-{args.preset}")


if __name__ == "__main__":
    main()
