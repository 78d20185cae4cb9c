"""Run 93: the engine's own batch-1 decode graph (warmup(), reduce-overhead) replayed under the profiler with
CUDA activity alone and with CPU and CUDA activity (as bench.profile_decode profiles): memcpy32_post in each.

    PYTHONPATH=$PWD python3 docs/bench/2026-12-02/run93_replay_profiles.py
"""
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from bench.engine import VARIANTS
from gptserve.engine import Engine
from gptserve.settings import ServingConfig

engine = Engine(ServingConfig(preset="gpt2-large", compile_mode="reduce-overhead", **VARIANTS["bf16-splitkv"]),
                device="cuda")
engine.warmup()
tokens = torch.zeros(1, dtype=torch.int64, device="cuda")
positions = torch.full((1,), 1024, dtype=torch.int64, device="cuda")
engine.decode_step(tokens, positions, 1024)
for activities in ([ProfilerActivity.CUDA], [ProfilerActivity.CPU, ProfilerActivity.CUDA]):
    torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for step in range(3):
            engine.decode_step(tokens, positions + step, 1024 + step)
        torch.cuda.synchronize()
    kernels = Counter(e.name[:40] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    print([a.name for a in activities], "kernels in 3 steps:", kernels.most_common(6))
