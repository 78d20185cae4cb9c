"""Run 92: where the engine's own decode graph (DecodeGraphs, compile_mode reduce-overhead) gets the copies that a
capture of the same compiled step by hand does not have (run 91): the capture itself profiled with Python stacks,
every device-to-device memcpy call printed with its stack.

    PYTHONPATH=$PWD python3 docs/bench/2026-12-02/run92_capture_copies.py
"""
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from bench.engine import VARIANTS
from gptserve.engine import Engine
from gptserve.settings import ServingConfig

engine = Engine(ServingConfig(preset="gpt2-large", compile_mode="reduce-overhead", **VARIANTS["bf16-splitkv"]),
                device="cuda")
graphs = engine._decode_graphs
graphs.capture(1, engine.kv_lengths())  # compiles (its warm run) and captures once, outside the profile
with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
    graphs.capture(1, engine.kv_lengths())
events = prof.events()
print(Counter(e.name for e in events if "memcpy" in e.name.lower() or e.name in ("aten::copy_", "aten::clone")))
shown = 0
for e in events:
    if "memcpy" in e.name.lower():
        chain, parent = [], e.cpu_parent
        while parent is not None:
            chain.append(parent.name)
            parent = parent.cpu_parent
        if shown < 3:
            print(f"\n{e.name} <- {' <- '.join(chain[:10])}")
            print("   " + "\n   ".join([f for f in (e.stack or []) if "torch/" not in f][:10]))
        shown += 1
print(f"\n{shown} memcpy calls in a capture of the batch-1 step")
