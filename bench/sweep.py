"""What the kernel sweeps (bench.rows_linear_sweep, bench.decode_attention_sweep) share: timing a kernel as a
decode step meets it (launched from a CUDA graph, its large operands read from HBM), checking each launch
configuration before timing it, and writing the report.

A decode step streams every layer's weights and KV cache once, so each kernel reads them from HBM; timed alone in a
loop, a matrix or cache smaller than the H200's 50 MB L2 would come from the cache instead (run 11 in
docs/benchmarks.md made that mistake). Each timing here cycles through copies that together pass STREAMED_BYTES.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

STREAMED_BYTES = 256 * 2**20


def streamed_us(fn, args: tuple, streamed: tuple[int, ...] = (1,)) -> float:
    """Microseconds of fn(args) replayed from a CUDA graph, averaged over copies of args[i] for every i in
    `streamed` (the others shared) that together pass STREAMED_BYTES."""
    from triton.testing import do_bench_cudagraph

    size = sum(args[i].numel() * args[i].element_size() for i in streamed)
    copies = [args] + [tuple(a.clone() if i in streamed else a for i, a in enumerate(args))
                       for _ in range(-(-STREAMED_BYTES // size) - 1)]
    return do_bench_cudagraph(lambda: [fn(c) for c in copies], rep=30) * 1e3 / len(copies)


def relative_error(got, want) -> float:
    """|got - want| / |want| (Frobenius norms, in fp32)."""
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def timed_configs(run, want, case: tuple, configs, streamed: tuple[int, ...] = (1,)) -> list:
    """[*config, microseconds] for each config whose run(case, config) matches `want` within 1% (relative
    norm), [*config, None, why] for the others."""
    rows = []
    for config in configs:
        try:
            got = run(case, config).float()
        except Exception as exc:  # out of registers or shared memory: not a candidate
            rows.append([*config, None, type(exc).__name__])
            continue
        if relative_error(got, want) >= 1e-2:
            rows.append([*config, None, "wrong result"])
            continue
        rows.append([*config, streamed_us(lambda c: run(c, config), case, streamed)])
    return rows


def fastest(configs: list):
    """The fastest timed entry of timed_configs(), or None."""
    timed = [c for c in configs if not isinstance(c[-1], str) and c[-1] is not None]
    return min(timed, key=lambda c: c[-1]) if timed else None


def write_report(report: dict, output: str, name: str) -> Path:
    """report as JSON at output/name-<UTC time>.json."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return path
