"""Launch the engine's decode kernels on the 40B's shapes, for Nsight Compute to read their hardware counters:

    ncu --clock-control none -k regex:'fp8_rows|rows_linear|decode_attention' --section SpeedOfLight \\
        --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy python -m bench.kernel_counters

The split-K FP8 kernel at 16 rows and the fused kernel at 1 row, both on the fc matrix (32768 x 8192, FP8 weights,
at their plans), and split-KV attention over an FP8 cache at batch 16 (1152 positions a row), its slices merged
after it and in it: each launched twice (the first launch compiles). Needs a CUDA GPU and triton.
"""
from __future__ import annotations

import torch

from gptserve.engine import decode_attention as da
from gptserve.engine import fp8_matmul
from gptserve.engine import rows_linear as rl
from gptserve.engine.config import PRESETS
from gptserve.engine.fp8 import quantize_rows, split_rows


def main():
    cfg = PRESETS["gpt-large-40b"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, k = cfg.d_ff, cfg.n_embd
    w, scale = quantize_rows((torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).to(torch.bfloat16))
    x16 = torch.randn(16, k, device="cuda", generator=gen).to(torch.bfloat16)
    shape = (16, cfg.n_head, cfg.n_ctx, cfg.head_dim)
    kc, vc = ((torch.randn(shape, device="cuda", generator=gen) * 0.5).to(torch.float8_e4m3fn) for _ in range(2))
    q = torch.randn(16, cfg.n_head, cfg.head_dim, device="cuda", generator=gen).to(torch.bfloat16)
    last = torch.full((16,), 1151, dtype=torch.int64, device="cuda")
    for _ in range(2):
        fp8_matmul.launch(*split_rows(x16), w)
        rl.launch(x16[:1], w, scale.view(-1), None, None, None, None, n, False, 0.0)
        da.launch(q, kc, vc, last)
        da.launch_merged(q, kc, vc, last)
    torch.cuda.synchronize()
    print("split-K plan", fp8_matmul.plan(n, k, torch.cuda.get_device_properties(0).multi_processor_count),
          "fused plan", rl.plan(1, n, k), "split-KV splits", da.plan(16, cfg.n_head, cfg.n_ctx))


if __name__ == "__main__":
    main()
