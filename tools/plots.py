"""The PNGs the tools write: the load test's report and the model comparison's sweep.

matplotlib is imported only here and only when a picture is asked for (Agg backend: no display needed). Each
figure's title is also stored as the PNG's Title text chunk, so the verdict can be read without looking.
"""
from __future__ import annotations

import os
import textwrap
from typing import Optional

import numpy as np

COLORS = {"e2e_ms": "tab:blue", "ttft_ms": "tab:orange", "tpot_ms": "tab:green", "itl_ms": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str) -> None:
    """Write fig as a PNG with its title in the PNG's Title chunk."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    fig.savefig(path, dpi=90, metadata={"Title": title})
    _pyplot().close(fig)


def verdict_title(head: str, passed: bool, failures, notes) -> str:
    """'<head> -- PASSED' or '<head> -- FAILED: <why>', then what the verdict needs beside it, wrapped."""
    text = f"{head} -- " + ("PASSED" if passed else "FAILED: " + "; ".join(failures))
    lines = textwrap.wrap(text, 120) + [textwrap.shorten(n, 120, placeholder=" ...") for n in notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- load test
def load_test_figure(records, streaming: bool, latencies: dict, report: dict, notes, args):
    """Latency CDFs with the SLO limits (labelled), throughput over time, latency over time, send lag.

    latencies: every sample per metric (load_test.latency_values); notes: what the verdict line says beside it."""
    plt = _pyplot()
    ok = [r for r in records if r.ok]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _latency_cdfs(axes[0][0], latencies, report, args.slos)
    _throughput(axes[0][1], records, ok, streaming, args.target_qps)
    _latency_over_time(axes[1][0], records, ok, streaming)
    _send_lag(axes[1][1], records, report, args.late_threshold_ms)
    head = (f"{args.model}: {report['completed']}/{report['scheduled']} ok, "
            f"{_num(report['output_throughput'])} tok/s, {'streaming' if streaming else 'non-streaming'}")
    fig.suptitle(verdict_title(head, report["passed"], report["slo_check"]["failures"], notes), fontsize=10)
    fig.tight_layout()
    return fig


def _latency_cdfs(ax, latencies, report, slos):
    for key, vals in latencies.items():
        vals = np.sort([v for v in vals if v is not None])
        if len(vals):
            name = "e2e" if key == "e2e_ms" else key.removesuffix("_ms").upper()
            ax.plot(vals, np.arange(1, len(vals) + 1) / len(vals), color=COLORS[key],
                    label=f"{name} (p99 {report[key]['p99']:.1f})")
    for slo in slos:
        where = "per request" if slo.percentile is None else f"p{slo.percentile:g}"
        ax.axvline(slo.limit, ls=":" if slo.percentile is None else "--", color=COLORS[slo.metric],
                   label=f"SLO {slo.metric.removesuffix('_ms')} <= {slo.limit:g} ms ({where})")
        if slo.percentile is not None:
            ax.axhline(slo.percentile / 100.0, ls=":", lw=0.8, color="gray")
    ax.set_xscale("log")
    _label(ax, "Latency CDFs", "ms (log)", "fraction of requests")


def _throughput(ax, records, ok, streaming, target_qps):
    end = max((r.end for r in records if r.end is not None), default=1.0)
    width = max(0.25, end / 40.0)
    bins = np.arange(0.0, end + width, width)
    if streaming:
        tok, _ = np.histogram([t for r in ok for t in r.token_times], bins=bins)
    else:
        tok, _ = np.histogram([r.end for r in ok], bins=bins, weights=[r.output_tokens for r in ok])
    ax.stairs(tok / width, bins, fill=True, alpha=0.5, color="tab:blue", label="output tokens/s")
    ax.set_xlabel(f"time since start (s), {width:.2g} s bins")
    ax.set_ylabel("output tokens / s")
    ax.legend(fontsize=8, loc="upper left")
    ax2 = ax.twinx()
    sched, _ = np.histogram([r.scheduled for r in records], bins=bins)
    done, _ = np.histogram([r.end for r in ok], bins=bins)
    ax2.stairs(sched / width, bins, color="tab:gray", label="scheduled req/s")
    ax2.stairs(done / width, bins, color="tab:green", label="completed req/s")
    ax2.set_ylabel("requests / s")
    ax2.legend(fontsize=8, loc="upper right")
    ax.set_title(f"Throughput over time (target {target_qps:g} req/s)")


def _latency_over_time(ax, records, ok, streaming):
    ax.scatter([r.scheduled for r in ok], [r.e2e_ms() for r in ok], s=6, label="e2e")
    if streaming:
        ax.scatter([r.scheduled for r in ok], [r.ttft_ms() for r in ok], s=6, label="TTFT")
    bad = [r for r in records if not r.ok]
    if bad:
        ax.scatter([r.scheduled for r in bad], [1.0] * len(bad), marker="x", color="red", label="failed")
    ax.set_yscale("log")
    _label(ax, "Latency over time", "scheduled send (s)", "ms (log)")


def _send_lag(ax, records, report, late_threshold_ms):
    sent = [r for r in records if r.send_start is not None]
    ax.scatter([r.scheduled for r in sent], [max(r.send_lag_ms(), 1e-3) for r in sent], s=6)
    ax.axhline(late_threshold_ms, ls="--", color="red", label=f"late threshold {late_threshold_ms:g} ms")
    ax.set_yscale("log")
    _label(ax, f"Send lag: {report['late']} of {report['sent']} late", "scheduled send (s)", "send lag (ms, log)")


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def save_load_test(path: str, records, streaming: bool, latencies: dict, report: dict, notes,
                   args) -> Optional[str]:
    """Draw and write the load test's PNG; an error string when matplotlib is missing."""
    try:
        fig = load_test_figure(records, streaming, latencies, report, notes, args)
    except ImportError as exc:
        return f"matplotlib unavailable ({exc})"
    save(fig, path)
    return None


# ---------------------------------------------------------------------------------------------------- sweep
def sweep_figure(report: dict):
    """compare_models: p99 end-to-end latency and TTFT against offered QPS, one line per model, the budget
    marked; points over budget drawn as crosses."""
    plt = _pyplot()
    c = report["config"]
    fig, (e2e_ax, ttft_ax) = plt.subplots(1, 2, figsize=(13, 5.5))
    no_ttft = []
    for i, (name, m) in enumerate(report["models"].items()):
        color = f"C{i}"
        pts = m["points"]
        x = [p["offered_qps"] if p["offered_qps"] is not None else p["qps"] for p in pts]
        _line(e2e_ax, x, [p["e2e_p99_ms"] for p in pts], pts, color, name)
        if m["streaming"]:
            _line(ttft_ax, x, [p["ttft_p99_ms"] for p in pts], pts, color, f"{name} p99")
            ttft_ax.plot(x, [p["ttft_p50_ms"] for p in pts], ls="--", color=color, alpha=0.6, label=f"{name} p50")
        else:
            no_ttft.append(name)
    e2e_ax.axhline(c["p99_e2e_ms"], ls=":", color="red", label=f"budget: p99 e2e <= {c['p99_e2e_ms']:g} ms")
    _label(e2e_ax, "P99 end-to-end latency", "offered load (req/s)", "ms")
    _label(ttft_ax, "TTFT (streaming models)" + (f"; no TTFT for {', '.join(no_ttft)} (not streaming)"
                                                 if no_ttft else ""), "offered load (req/s)", "ms")
    best = ", ".join(f"{n} {_num(m['highest_sustained_qps'], 'none', 'g')}" for n, m in report["models"].items())
    fig.suptitle(f"compare_models: highest sustained QPS {best} (crosses: over budget; Poisson, "
                 f"{c['duration_s']:g} s per point, {c['max_new_tokens']} new tokens)", fontsize=10)
    fig.tight_layout()
    return fig


def _line(ax, x, y, pts, color, label):
    ax.plot(x, y, marker="o", color=color, label=label)
    over = [(a, b) for a, b, p in zip(x, y, pts) if not p["within_budget"] and b is not None]
    if over:
        ax.scatter(*zip(*over), marker="x", s=80, color="red", zorder=3)


def save_sweep(path: str, report: dict) -> Optional[str]:
    try:
        fig = sweep_figure(report)
    except ImportError as exc:
        return f"matplotlib unavailable ({exc})"
    save(fig, path)
    return None


def _num(v, none: str = "n/a", fmt: str = ".1f") -> str:
    return none if v is None else format(v, fmt)
