"""bench.sass_counts compiles the engine's kernels for Hopper on any machine with Triton (CI has none: skipped):
it must keep up with the kernels' signatures, and count what it says it counts."""
from tests.unit.triton_interpreter import needs_triton

pytestmark = needs_triton


def test_one_row_kernel_compiles_for_hopper_fp8_widened_in_pairs_int8_through_its_bits():
    from bench import sass_counts
    from gptserve.engine import rows_linear as rl

    config = rl.plan(1, 8192, 8192, one_byte=True)
    fp8, int8 = (sass_counts.opcode_counts(sass_counts.compile_one_row(w, config)) for w in ("fp8", "int8"))
    # 64 weights a thread a loop: FP8 two a pair-converting instruction (F2FP, one more for the store); int8 by
    # integer adds on a float's bits, no int-to-float conversion (I2F)
    assert fp8["F2FP"] >= 32 and int8["I2F"] == 0 and int8["IADD3"] >= 32


def test_int8_prefill_kernel_runs_hopper_int8_mmas():
    from bench import sass_counts

    counts = sass_counts.opcode_counts(sass_counts.compile_int8_matmul(16 * 1024))
    assert any(op.startswith("IGMMA") and op.endswith("S8.S8") for op in counts)
