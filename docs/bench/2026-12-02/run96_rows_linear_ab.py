"""Run 96: each layer's fused linear (rows_linear) at its plan, timed alone from HBM as bench.rows_linear_sweep
times it, and its error against the torch arithmetic; run once from each commit's directory (the gptserve found
first on the path is the one timed): gpt2-large bf16 at 1 and 16 rows, the 40B's FP8 weights at 1 row."""
import torch

from bench.rows_linear_sweep import layer_case, layers
from bench.sweep import relative_error, streamed_us
from gptserve.engine import rows_linear as rl

print("==", rl.__file__)
gen = torch.Generator(device="cuda").manual_seed(0)
for preset, fp8, rows_list in [("gpt2-large", False, (1, 16)), ("gpt-large-40b", True, (1,))]:
    for rows in rows_list:
        for name, (n, k, norm, gelu, residual) in layers(preset).items():
            case = layer_case(n, k, norm and k <= rl.NORM_MAX_K, gelu, residual, rows, gen, fp8)
            error = relative_error(rl.launch(*case).float(), rl.reference(*case).float())
            us = streamed_us(lambda c: rl.launch(*c), case)
            mb = case[1].numel() * case[1].element_size() / 1e6
            print(f"{preset:13s} {'fp8' if fp8 else 'bf16'} rows {rows:2d} {name:9s} {us:8.2f} us "
                  f"{mb / us:5.2f} TB/s  error {error:.1e}", flush=True)
