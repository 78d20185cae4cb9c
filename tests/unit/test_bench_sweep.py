"""The benchmarks' parts that need no GPU: a configuration that fails or gives a wrong result is recorded with the
reason and never timed, the fastest timed entry is picked from the rest, and bench.engine's --constant sets only
constants that exist; under Triton's interpreter, split_kv_variants' designs launch their kernels."""
import pytest
import torch

from bench import (decode_attention_sweep, persistent_reductions, prefill_linear_sweep,  # noqa: F401
                   rows_linear_sweep, split_kv_variants, start_profile)  # (they import without a GPU)
from bench.engine import set_constants
from bench.sweep import fastest, timed_configs
from gptserve.engine import decode_attention
from tests.unit.test_decode_attention import interpreter_reads_loop_bounds
from tests.unit.triton_interpreter import needs_triton, run_interpreted


def test_failing_and_wrong_configurations_are_recorded_not_timed():
    want = torch.ones(4)

    def run(case, config):
        if config == ("too big",):
            raise RuntimeError("out of resources")
        return want * 2

    rows = timed_configs(run, want, (want,), [("too big",), ("wrong",)])
    assert rows == [["too big", None, "RuntimeError"], ["wrong", None, "wrong result"]]
    assert fastest(rows) is None
    assert fastest([[1, 2, 30.0], [4, None, 10.0], [5, None, "wrong result"]]) == [4, None, 10.0]


def test_split_kv_sweep_takes_listed_configurations():
    assert decode_attention_sweep.parse_configs("13,64,2,3;20,64,2,3") == [(13, 64, 2, 3), (20, 64, 2, 3)]
    for wrong in ("13,64", "20,64,2,3,1056"):
        with pytest.raises(SystemExit, match="SPLITS,BLOCK"):
            decode_attention_sweep.parse_configs(wrong)
    assert decode_attention_sweep.grid(1)[0] == (1, 32, 2, 1) and {c[0] for c in decode_attention_sweep.grid(7)} \
        == {3, 7, 14}


def test_engine_bench_sets_existing_constants_and_refuses_unknown_ones(monkeypatch):
    monkeypatch.setattr(decode_attention, "WARPS", decode_attention.WARPS)
    monkeypatch.setattr(decode_attention, "PROGRAMS", decode_attention.PROGRAMS)
    set_constants(["gptserve.engine.decode_attention.WARPS=4", "gptserve.engine.decode_attention.PROGRAMS=528"])
    assert decode_attention.WARPS == 4 and decode_attention.PROGRAMS == 528
    with pytest.raises(SystemExit, match="has no WARP"):
        set_constants(["gptserve.engine.decode_attention.WARP=4"])


def check_split_kv_variant(design: str):
    """One of bench.split_kv_variants' designs launched as the sweep launches it, its states merged against the
    engine's torch reference (run_interpreted calls this)."""
    from tests.unit.test_decode_attention import LAST, case

    q, k, v = case(torch.bfloat16)
    q = q.to(torch.bfloat16)
    states = split_kv_variants.partials((q, k, v, LAST), design, 32, 2, 1, None)
    want = decode_attention.merge(*decode_attention.reference(q, k, v, LAST))
    torch.testing.assert_close(decode_attention.merge(*states), want, atol=1e-2, rtol=1e-2)


@needs_triton
@interpreter_reads_loop_bounds
@pytest.mark.parametrize("design", ["engine", "mma"])
def test_split_kv_variants_launch_their_kernels(design):
    run_interpreted("tests.unit.test_bench_sweep", "check_split_kv_variant", design)
