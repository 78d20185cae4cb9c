"""The kernel sweeps' shared parts that need no GPU: a configuration that fails or gives a wrong result is recorded
with the reason and never timed, and the fastest timed entry is picked from the rest."""
import torch

from bench import decode_attention_sweep, prefill_linear_sweep, rows_linear_sweep  # noqa: F401  (import without a GPU)
from bench.sweep import fastest, timed_configs


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
