"""Run 89: which op launches the device-to-device copy a gpt2-large batch-1 decode step makes once a layer
(memcpy32_post under CUDA-graph replay). The engine's default GPU variant, compiled without CUDA graphs, one
decode step profiled with Python stacks: every copy, with the CPU ops above it and its stack.

    PYTHONPATH=$PWD python3 docs/bench/2026-12-02/run89_trace_copies.py [VARIANT] [PRESET]
(on a machine without a GPU it runs on the CPU: a check of the script, with PRESET tiny)
"""
import sys
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from bench.engine import VARIANTS, prompts
from gptserve.engine import Engine
from gptserve.settings import ServingConfig

variant = sys.argv[1] if len(sys.argv) > 1 else "bf16-splitkv"
preset = sys.argv[2] if len(sys.argv) > 2 else "gpt2-large"
device = "cuda" if torch.cuda.is_available() else "cpu"
prompt_len = 1024 if device == "cuda" else 100
engine = Engine(ServingConfig(preset=preset, compile_mode="default", **VARIANTS[variant]), device=device)
engine.prefill(prompts(1, prompt_len, engine.cfg.vocab_size), [0])
tokens = torch.zeros(1, dtype=torch.int64, device=device)
positions = torch.full((1,), prompt_len, dtype=torch.int64, device=device)
for step in range(3):  # compile, then settle
    engine.decode_step(tokens, positions + step, prompt_len + step)
engine.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
    engine.decode_step(tokens, positions + 3, prompt_len + 3)
    engine.synchronize()
events = prof.events()
on_gpu = Counter(e.name[:90] for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
print("GPU activity:", on_gpu.most_common(30))
print("CPU ops:", Counter(e.name for e in events if e.device_type == torch.autograd.DeviceType.CPU).most_common(40))
shown = 0
for e in events:
    launched = " ".join(k.name for k in getattr(e, "kernels", []))
    if "memcpy" in e.name.lower() or (e.name in ("aten::copy_", "aten::clone") and
                                      ("memcpy" in launched.lower() or device == "cpu")):
        chain, parent = [], e.cpu_parent
        while parent is not None:
            chain.append(parent.name)
            parent = parent.cpu_parent
        if shown < 6:
            print(f"\n{e.name} [{launched[:60]}] <- {' <- '.join(chain[:8])}")
            print("   " + "\n   ".join((e.stack or [])[:12]))
        shown += 1
print(f"\n{shown} copy events in one step")
