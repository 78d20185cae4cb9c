"""Run 96's SASS check, on the CPU: rows_linear's kernel at qkv's one-row configuration (LayerNorm and bias,
(8, 2048, 8, 2)), compiled for sm_90; prints the gptserve it compiled, the instruction count, and the order of its
global loads (LDG), shuffles, barriers, shared-memory traffic and stores, runs of one opcode counted.

    PYTHONPATH=DIR:$PWD python3 docs/bench/2026-12-02/run96_sass_order.py   # DIR holds the commit's gptserve

(DIR made by `git archive COMMIT gptserve | tar -x -C DIR`; run at 0b4a346 and d3632ae.) Needs triton."""
import subprocess
import tempfile
from pathlib import Path

import triton.backends.nvidia

from bench import sass_counts
from gptserve.engine import rows_linear as rl

constants = {"ROWS": 1, "HAS_SCALE": False, "HAS_BIAS": True, "HAS_NORM": True, "HAS_RESIDUAL": False,
             "GELU": False, "INT8_BITS": False, "TO_CACHE": False, "HEAD_DIM": 1, "BLOCK_N": 8, "BLOCK_K": 2048}
cubin = sass_counts.compile_for_hopper(rl._kernel(), {"eps": "fp32"}, constants, 8, 2)
nvdisasm = Path(triton.backends.nvidia.__file__).parent / "bin" / "nvdisasm"
with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(cubin)
    f.flush()
    sass = subprocess.run([str(nvdisasm), "-c", f.name], check=True, capture_output=True, text=True).stdout
ops = [op.split(".")[0] for op in sass_counts.OPCODE.findall(sass)]
runs = []
for op in ops:
    if op in ("LDG", "SHFL", "BAR", "STG", "LDS", "STS", "MUFU"):
        if runs and runs[-1][0] == op:
            runs[-1][1] += 1
        else:
            runs.append([op, 1])
print(rl.__file__, len(ops), " ".join(f"{op}x{n}" for op, n in runs))
