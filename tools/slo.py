"""Service-level objectives as the load tests take them: `--slo e2e_ms=2500,p99_ttft_ms=500`."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from tools.cli import ToolError

SLO_METRICS = ("e2e_ms", "ttft_ms", "tpot_ms", "itl_ms")
_SLO_KEY = re.compile(r"^(?:p(\d+(?:\.\d+)?)_)?(e2e_ms|ttft_ms|tpot_ms|itl_ms)$")


@dataclass(frozen=True)
class Slo:
    """`metric<=limit` per request (goodput) or, with a percentile, `p<q>(metric)<=limit` over the run."""

    key: str
    metric: str
    limit: float
    percentile: Optional[float] = None


def parse_slo(text: Optional[str]) -> list[Slo]:
    """'e2e_ms=2500,ttft_ms=500,p99_e2e_ms=3000' -> [Slo, ...]; ToolError on a bad item."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        m = _SLO_KEY.match(key.strip())
        if not sep or not m:
            raise ToolError(f"bad SLO item {item!r}: expected [pNN_]METRIC=LIMIT with METRIC one of "
                            f"{', '.join(SLO_METRICS)} (e.g. e2e_ms=2500,p99_ttft_ms=500)")
        try:
            limit = float(value)
        except ValueError:
            raise ToolError(f"bad SLO limit in {item!r}: not a number") from None
        q = float(m.group(1)) if m.group(1) else None
        if q is not None and not 0 < q <= 100:
            raise ToolError(f"bad SLO percentile in {item!r}")
        out.append(Slo(key.strip(), m.group(2), limit, q))
    return out


def slo_text(slos) -> str:
    return ",".join(f"{s.key}<={s.limit:g}" for s in slos)
