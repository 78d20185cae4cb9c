"""Run 90: the copies in a CUDA graph of gpt2-large's decode step (memcpy32_post under replay, one a layer at batch
1 in run 80's profile, none in an eager profile of the same compiled step, run 89). Captures the step, then each
custom op of a block alone, with CUDA's graph debug dump, and prints every memcpy node.

    PYTHONPATH=$PWD python3 docs/bench/2026-12-02/run90_graph_copies.py OUT_DIR
"""
import re
import sys
from pathlib import Path

import torch

from bench.engine import VARIANTS, prompts
from gptserve.engine import Engine
from gptserve.engine.decode_attention import decode_attention
from gptserve.engine.rows_linear import fused_linear
from gptserve.settings import ServingConfig

out = Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/run90")
out.mkdir(parents=True, exist_ok=True)
engine = Engine(ServingConfig(preset="gpt2-large", compile_mode="default", **VARIANTS["bf16-splitkv"]), device="cuda")
engine.prefill(prompts(2, 1024, engine.cfg.vocab_size), [0, 1])


def copies(name: str, run) -> None:
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    graph.enable_debug_mode()
    with torch.cuda.graph(graph):
        run()
    path = out / f"{name}.dot"
    graph.debug_dump(str(path))
    text = path.read_text()
    nodes = re.split(r"\n(?=\s*\"?graph_\d+_node_\d+\"?\s*\[)", text)[1:]  # one entry a node's description
    memcpys = [n for n in nodes if "MEMCPY" in n.upper()]
    print(f"{name}: {len(nodes)} nodes, {sum('KERNEL' in n.upper() for n in nodes)} kernels, "
          f"{len(memcpys)} memcpy nodes ({text.upper().count('MEMCPY')} MEMCPY mentions)")
    for node in memcpys[:2]:
        print("   ", re.sub(r"\s+", " ", node)[:900])


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
