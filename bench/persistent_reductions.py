"""Run a bench module with inductor's persistent reductions for every inner reduction of at most N elements
(inductor's own threshold is 1024), e.g. the 40B's 8192- and 32768-wide rows of LayerNorm and FP8 terms:

    TORCHINDUCTOR_CACHE_DIR=/tmp/fresh python -m bench.persistent_reductions 8192 bench.profile_decode \
        --preset gpt-large-40b --variant fp8wo-splitkv-kvfp8 --batches 16 --max-seq-len 1280

Use an empty compile cache: its keys do not include this choice. Needs a GPU.
"""
from __future__ import annotations

import runpy
import sys

from torch._inductor import choices, config
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V


def persist_up_to(limit: int):
    """Make InductorChoices pick a persistent reduction for inner reductions of at most `limit` elements."""
    chosen = choices.InductorChoices.should_use_persistent_reduction

    def persistent(features, cooperative_reduction):
        if (config.triton.persistent_reductions and features.get_reduction_hint() == ReductionHint.INNER
                and V.graph.sizevars.statically_known_leq(features.reduction_numel, limit)):
            return True
        return chosen(features, cooperative_reduction)

    choices.InductorChoices.should_use_persistent_reduction = staticmethod(persistent)


if __name__ == "__main__":
    limit, module, *rest = sys.argv[1:]
    persist_up_to(int(limit))
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__")
