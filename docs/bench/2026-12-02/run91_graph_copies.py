"""Run 91: the copies in a CUDA graph of gpt2-large's decode step (memcpy32_post under replay, one a layer at batch
1 in run 80's profile, none in an eager profile of the same compiled step, run 89). Captures the step, then each
custom op of a block alone, and counts the kernels of one replay of each under the profiler.

    PYTHONPATH=$PWD python3 docs/bench/2026-12-02/run91_graph_copies.py
"""
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from bench.engine import VARIANTS, prompts
from gptserve.engine import Engine
from gptserve.engine.decode_attention import decode_attention
from gptserve.engine.rows_linear import fused_linear
from gptserve.settings import ServingConfig

engine = Engine(ServingConfig(preset="gpt2-large", compile_mode="default", **VARIANTS["bf16-splitkv"]), device="cuda")
engine.prefill(prompts(2, 1024, engine.cfg.vocab_size), [0, 1])


def copies(name: str, run) -> None:
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    kernels = Counter(e.name[:70] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"{name}: {sum(kernels.values())} kernels in a replay; copies: "
          f"{ {k: n for k, n in kernels.items() if 'memcpy' in k.lower() or 'copy' in k.lower()} }; "
          f"most: {kernels.most_common(4)}", flush=True)


for rows in (1, 2):
    tokens = torch.zeros(rows, dtype=torch.int64, device="cuda")
    positions = torch.full((rows,), 1024, dtype=torch.int64, device="cuda")
    copies(f"step-b{rows}", lambda: engine.decode_step(tokens, positions, 1024))

block = engine.model.blocks[0]
cache = block.attn.cache
x = torch.randn(1, engine.cfg.n_embd, device="cuda", dtype=torch.bfloat16)
pos = torch.full((1,), 1024, dtype=torch.int64, device="cuda")
copies("qkv-to-cache", lambda: fused_linear(x, block.attn.qkv, norm=block.ln_1, to_cache=(cache.k, cache.v, pos)))
copies("proj", lambda: fused_linear(x, block.attn.proj, residual=x))
q = torch.randn(1, engine.cfg.n_head, engine.cfg.head_dim, device="cuda", dtype=torch.bfloat16)
copies("decode-attention", lambda: decode_attention(q, cache.k, cache.v, pos))
qkv = torch.randn(1, 1, 3 * engine.cfg.n_embd, device="cuda", dtype=torch.bfloat16)
step_q = qkv.view(1, 1, 3, engine.cfg.n_head, engine.cfg.head_dim).permute(2, 0, 3, 1, 4)[0][:, :, 0]
copies("decode-attention-strided-q", lambda: decode_attention(step_q, cache.k, cache.v, pos))
