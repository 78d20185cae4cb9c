"""Run 94: the batch-1 step (compile_mode default) captured by hand at two KV lengths, the bucket of position 1024
and the whole cache (what DecodeGraphs captures with split-KV): memcpy32_post in a replay of each.

    PYTHONPATH=$PWD python3 docs/bench/2026-12-02/run94_kv_len_copies.py
"""
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from bench.engine import VARIANTS
from gptserve.engine import Engine
from gptserve.settings import ServingConfig

engine = Engine(ServingConfig(preset="gpt2-large", compile_mode="default", **VARIANTS["bf16-splitkv"]), device="cuda")
tokens = torch.zeros(1, dtype=torch.int64, device="cuda")
positions = torch.full((1,), 1024, dtype=torch.int64, device="cuda")
for max_position in (1024, engine.context - 1):
    for _ in range(2):
        engine.decode_step(tokens, positions, max_position)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        engine.decode_step(tokens, positions, max_position)
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    kernels = Counter(e.name[:40] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    print("max_position", max_position, "kv_len", engine.kv_len_for(max_position), kernels.most_common(4))
