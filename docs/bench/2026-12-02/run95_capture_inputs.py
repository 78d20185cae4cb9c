"""Run 95: the batch-1 step (compile_mode default) captured by graphs.capture() (side-stream warm run, a pool) with
tokens and positions as separate tensors, then as views of one [2, 1, 1] tensor (as DecodeGraphs keeps them):
memcpy32_post in a replay of each.

    PYTHONPATH=$PWD python3 docs/bench/2026-12-02/run95_capture_inputs.py
"""
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from bench.engine import VARIANTS
from gptserve.engine import Engine
from gptserve.engine.graphs import capture
from gptserve.settings import ServingConfig

engine = Engine(ServingConfig(preset="gpt2-large", compile_mode="default", **VARIANTS["bf16-splitkv"]), device="cuda")
marker = engine.model.kv_len_marker
inputs = torch.zeros(2, 1, 1, dtype=torch.int64, device="cuda")
separate = (torch.zeros(1, 1, dtype=torch.int64, device="cuda"), torch.zeros(1, 1, dtype=torch.int64, device="cuda"))
pool = torch.cuda.graph_pool_handle()
for name, (tokens, positions) in (("separate", separate), ("views", (inputs[0], inputs[1]))):
    graph, _ = capture(lambda: engine._decode_step(tokens, positions, marker), engine.device, pool)
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    kernels = Counter(e.name[:40] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    print(name, kernels.most_common(4), flush=True)
