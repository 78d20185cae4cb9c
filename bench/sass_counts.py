"""Compile the engine's Triton kernels for Hopper, no GPU needed, and count the machine instructions: where int8,
FP8 and bf16 weights differ in the work of widening them at one row, and which MMAs prefill's int8 GEMM runs.

    python -m bench.sass_counts [--weights bf16,fp8,int8] [--config 8,2048,8,2]
    python -m bench.sass_counts --kernel int8_matmul

rows_linear (the fused decode linear) at one row: the config is (BLOCK_N, BLOCK_K, num_warps, num_stages), by
default the 40B's one-row plan, with a scale per row and nothing else fused. int8_matmul at its plan for the
40B's prefill rows. Pointers and widths aligned to 16 as the engine's tensors are (Triton specialises on that at
launch, and unaligned code loads byte by byte). Needs triton with its NVIDIA backend (ptxas and nvdisasm ship in
its wheel).
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import tempfile
from pathlib import Path

from gptserve.engine import int8_matmul
from gptserve.engine import rows_linear as rl

WEIGHT_TYPES = {"bf16": "bf16", "fp8": "fp8e4nv", "int8": "i8"}
ALIGNED = ("N", "K", "stride_xm", "stride_wn", "stride_rm", "stride_om")  # besides every pointer
OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9_.x]*)")  # with its modifiers


def compile_for_hopper(kernel, types: dict, constants: dict, warps: int, stages: int) -> bytes:
    """The kernel's cubin for sm_90: arguments typed by `types`, else bf16 pointers (names ending in _ptr) and i32
    scalars; its pointers and ALIGNED widths taken as multiples of 16."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constants else types.get(name, "*bf16" if name.endswith("_ptr")
                                                                         else "i32")
                 for name in kernel.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
               if name.endswith("_ptr") or name in ALIGNED}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "num_stages": stages})
    return compiled.asm["cubin"]


def compile_one_row(weights: str, config: tuple[int, int, int, int]) -> bytes:
    """rows_linear's kernel at one row, with weights of the given format."""
    kernel = rl._kernel()
    block_n, block_k, warps, stages = config
    constants = {"ROWS": 1, "HAS_SCALE": weights != "bf16", "HAS_BIAS": False, "HAS_NORM": False,
                 "HAS_RESIDUAL": False, "GELU": False, "INT8_BITS": weights == "int8", "TO_CACHE": False,
                 "HEAD_DIM": 1, "BLOCK_N": block_n, "BLOCK_K": block_k}
    types = {"w_ptr": "*" + WEIGHT_TYPES[weights], "scale_ptr": "*fp32", "eps": "fp32"}
    return compile_for_hopper(kernel, types, constants, warps, stages)


def compile_int8_matmul(rows: int) -> bytes:
    """int8_matmul's kernel at its plan for `rows` rows, with a bias, bf16 out."""
    kernel = int8_matmul._kernel()
    block_m, block_n, block_k, group_m, warps, stages = int8_matmul.plan(rows)
    constants = {"HAS_BIAS": True, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": group_m}
    types = {"x_desc": f"tensordesc<i8[{block_m}, {block_k}]>", "w_desc": f"tensordesc<i8[{block_n}, {block_k}]>",
             "x_scale_ptr": "*fp32", "w_scale_ptr": "*fp32"}
    return compile_for_hopper(kernel, types, constants, warps, stages)


def opcode_counts(cubin: bytes) -> collections.Counter:
    """Instructions by opcode (the MMAs with their shape and types, others without modifiers), as nvdisasm reads
    the cubin."""
    import triton.backends.nvidia

    nvdisasm = Path(triton.backends.nvidia.__file__).parent / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(nvdisasm), "-c", f.name], check=True, capture_output=True, text=True).stdout
    return collections.Counter(op if "MMA" in op else op.split(".")[0] for op in OPCODE.findall(sass))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default="rows_linear", choices=("rows_linear", "int8_matmul"))
    p.add_argument("--rows", type=int, default=16 * 1024, help="int8_matmul: the rows its plan is for")
    p.add_argument("--weights", default="bf16,fp8,int8")
    p.add_argument("--config", default=",".join(map(str, rl.plan(1, 8192, 8192, one_byte=True))),
                   help="BLOCK_N,BLOCK_K,num_warps,num_stages (default: the 40B's one-row plan)")
    args = p.parse_args()
    if args.kernel == "int8_matmul":
        counts = opcode_counts(compile_int8_matmul(args.rows))
        mmas = ", ".join(f"{op} {n}" for op, n in counts.items() if "MMA" in op) or "none"
        print(f"int8_matmul at {int8_matmul.plan(args.rows)}: {sum(counts.values())} instructions; MMAs: {mmas}; "
              + ", ".join(f"{op} {n}" for op, n in counts.most_common(8)))
        return
    config = tuple(int(v) for v in args.config.split(","))
    for weights in args.weights.split(","):
        counts = opcode_counts(compile_one_row(weights, config))
        top = ", ".join(f"{op} {n}" for op, n in counts.most_common(8))
        print(f"{weights:5s} config {config}: {sum(counts.values())} instructions; {top}", flush=True)


if __name__ == "__main__":
    main()
