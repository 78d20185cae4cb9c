#!/usr/bin/env python3
"""GPU power monitor: energy, power, temperature, clock-event reasons and rolling tokens per joule.

Samples NVML every --interval seconds: the total-energy counter (its deltas are the energy, so short power spikes
between samples are not missed), instantaneous power, temperature, SM clock and the clock-event reasons
(power cap, thermal and hardware slowdowns are flagged). It also reads the server's gpt_generated_tokens_total
counter on the metrics endpoint (found as every tool finds it: --metrics-url, else $METRICS_PORT on $HOST; 'none'
to skip) and reports tokens per joule, over the whole run and over a rolling --window.

Runs until --duration passes or Ctrl-C, or with `-- COMMAND ...` measures around that command and exits with its
exit status. Without an NVIDIA GPU it says so in one line, still counts the generated tokens, and writes the
GPU fields of its JSON as nulls (and still runs the command). Exit status otherwise: 0, or 2 on a usage error.

    .venv/bin/python tools/power_monitor.py --output-json power.json -- \\
        .venv/bin/python tools/load_test.py --duration 60
"""
from __future__ import annotations

import argparse
import collections
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

from tools import endpoints
from tools.cli import EXIT_OK, EXIT_USAGE, ToolError, utc_now, write_json
from tools.energy import nvml, tokens_per_joule
from tools.metrics import scrape

PROG = "power_monitor"

# Clock-event ("throttle") reason bits, from nvml.h (stable values; older pynvml lacks some names).
REASONS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
# Reasons that mean the GPU ran slower than it could: flagged in the report.
SLOWDOWNS = ("sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")


def decode_reasons(mask: Optional[int]) -> list[str]:
    if mask is None:
        return []
    return [name for name, bit in REASONS.items() if mask & bit]


class Gpu:
    """One GPU through NVML; every reading returns None when the GPU does not support it."""

    def __init__(self, pynvml, handle, index: int):
        self.nv, self.h, self.index = pynvml, handle, index

    def _call(self, fn, *args):
        try:
            return fn(self.h, *args)
        except Exception:
            return None

    def info(self) -> dict:
        name = self._call(self.nv.nvmlDeviceGetName)
        uuid = self._call(self.nv.nvmlDeviceGetUUID)
        limit = self._call(self.nv.nvmlDeviceGetEnforcedPowerLimit)
        return {"index": self.index, "name": name.decode() if isinstance(name, bytes) else name,
                "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                "power_limit_w": None if limit is None else limit / 1000.0}

    def sample(self) -> dict:
        nv = self.nv
        energy = self._call(nv.nvmlDeviceGetTotalEnergyConsumption)  # mJ
        power = self._call(nv.nvmlDeviceGetPowerUsage)  # mW
        temp = self._call(nv.nvmlDeviceGetTemperature, getattr(nv, "NVML_TEMPERATURE_GPU", 0))
        sm = self._call(nv.nvmlDeviceGetClockInfo, getattr(nv, "NVML_CLOCK_SM", 1))
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        mask = self._call(reasons_fn) if reasons_fn else None
        return {"energy_j": None if energy is None else energy / 1000.0,
                "power_w": None if power is None else power / 1000.0,
                "temperature_c": temp, "sm_clock_mhz": sm, "clock_event_mask": mask,
                "clock_events": decode_reasons(mask)}


NO_GPU_SAMPLE = {"energy_j": None, "power_w": None, "temperature_c": None, "sm_clock_mhz": None,
                 "clock_event_mask": None, "clock_events": []}


class Monitor:
    """Samples the GPU (when there is one) and the server's generated-token counter (when it is readable)."""

    def __init__(self, args, gpu: Optional[Gpu]):
        self.args, self.gpu = args, gpu
        self.samples: list[dict] = []
        self.stop_event = threading.Event()
        self.t0 = time.monotonic()
        self.energy0: Optional[float] = None
        self.tokens0: Optional[float] = None
        self.window = collections.deque()  # (t, energy_j, tokens)
        self.tokens_reason: Optional[str] = None if args.metrics_url else "not read (--metrics-url none)"

    def _tokens(self) -> Optional[float]:
        """The server's generated-token counter (None, with tokens_reason, when it cannot be read)."""
        try:
            snap = scrape(self.args.metrics_url, timeout=2.0)
        except ToolError as exc:
            self.tokens_reason = str(exc)
            return None
        labels = {"model": self.args.model} if self.args.model else {}
        value = snap.sum("gpt_generated_tokens_total", **labels)
        if value is None:
            self.tokens_reason = f"the server exports no gpt_generated_tokens_total{labels or ''}"
        return value

    def take(self) -> dict:
        t = time.monotonic() - self.t0
        s = {"t_s": round(t, 3)}
        s.update(self.gpu.sample() if self.gpu is not None else NO_GPU_SAMPLE)
        tokens = self._tokens() if self.args.metrics_url else None
        if not self.samples:  # the first sample is the baseline
            self.energy0, self.tokens0 = s["energy_j"], tokens
        s["energy_since_start_j"] = None if s["energy_j"] is None or self.energy0 is None else \
            s["energy_j"] - self.energy0
        s["tokens_since_start"] = None if tokens is None or self.tokens0 is None else tokens - self.tokens0
        self.window.append((t, s["energy_j"], tokens))
        while self.window and t - self.window[0][0] > self.args.window:
            self.window.popleft()
        s["rolling_tokens_per_joule"] = self._rolling()
        self.samples.append(s)
        return s

    def _rolling(self) -> Optional[float]:
        if len(self.window) < 2:
            return None
        (_, e0, k0), (_, e1, k1) = self.window[0], self.window[-1]
        if None in (e0, e1, k0, k1) or e1 <= e0:
            return None
        return (k1 - k0) / (e1 - e0)

    def loop(self) -> None:
        while not self.stop_event.is_set():
            s = self.take()
            if self.gpu is not None and not self.args.quiet:
                flags = [r for r in s["clock_events"] if r in SLOWDOWNS]
                tpj = s["rolling_tokens_per_joule"]
                print(f"{PROG}: t={s['t_s']:7.1f}s power={_f(s['power_w'])} W temp={_f(s['temperature_c'])} C "
                      f"sm={_f(s['sm_clock_mhz'])} MHz tok/J={_f(tpj, 3)}"
                      + (f" SLOWDOWN: {','.join(flags)}" if flags else ""), file=sys.stderr, flush=True)
            self.stop_event.wait(self.args.interval)
        self.take()  # a last sample at the end of the window


def _f(v, digits=1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def summarize(args, gpu_info, reason, samples, tokens_reason, command, exit_code, elapsed) -> dict:
    energy = tokens = None
    sampled_s = 0.0  # energy counts from the first sample to the last, so power divides by that span
    if samples:
        energy = samples[-1]["energy_since_start_j"]
        tokens = samples[-1]["tokens_since_start"]
        sampled_s = samples[-1]["t_s"] - samples[0]["t_s"]
    power = [s["power_w"] for s in samples if s["power_w"] is not None]
    temps = [s["temperature_c"] for s in samples if s["temperature_c"] is not None]
    slowdown = {name: sum(1 for s in samples if name in s["clock_events"]) for name in SLOWDOWNS} \
        if samples and gpu_info is not None else None
    if gpu_info is None:
        tpj, tpj_reason = None, reason
    elif tokens is None:
        tpj, tpj_reason = None, f"generated tokens unknown: {tokens_reason}"
    else:
        tpj, tpj_reason = tokens_per_joule(tokens, energy, "GPU energy counter unavailable")
    return {
        "tool": PROG,
        "timestamp": utc_now(),
        "gpu_available": gpu_info is not None,
        "reason": reason,
        "gpu": gpu_info,
        "interval_s": args.interval,
        "duration_s": elapsed,
        "command": command or None,
        "command_exit_code": exit_code,
        "metrics_url": args.metrics_url,
        "model": args.model,
        "energy_j": energy,
        "avg_power_w": (energy / sampled_s) if energy is not None and sampled_s else None,
        "mean_sampled_power_w": sum(power) / len(power) if power else None,
        "max_power_w": max(power) if power else None,
        "max_temperature_c": max(temps) if temps else None,
        "generated_tokens": tokens,
        "generated_tokens_reason": None if tokens is not None else tokens_reason,
        "tokens_per_joule": tpj,
        "tokens_per_joule_reason": tpj_reason,
        "slowdown_samples": slowdown,
        "slowdown_detected": any(slowdown.values()) if slowdown else None,
        "samples": samples,
    }


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [options] [-- COMMAND [ARG ...]]",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="With -- COMMAND the exit status is the command's; otherwise 0 "
                                       "(2 on a usage error).")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to watch")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C, or until COMMAND exits)")
    endpoints.add_arguments(p, "gRPC (its host locates the metrics endpoint)")
    p.add_argument("--model", default=None, help="count tokens of this model only (default: all models)")
    p.add_argument("--window", type=float, default=10.0, help="rolling tokens-per-joule window (s)")
    p.add_argument("--output-json", default=None)
    p.add_argument("--quiet", action="store_true", help="no per-sample lines on stderr")
    args = p.parse_args(argv)
    if args.interval <= 0 or args.window <= 0:
        p.error("--interval and --window must be > 0")
    endpoints.resolve_args(p, args)
    return args, command


def main(argv=None) -> int:
    args, command = parse_args(argv)
    print(f"{PROG}: metrics {args.metrics_url or 'not read'} (from {args.endpoints.metrics_from})", file=sys.stderr)
    pynvml, handles, reason = nvml([args.gpu])
    gpu = Gpu(pynvml, handles[0], args.gpu) if pynvml is not None else None
    if gpu is None:
        print(f"{PROG}: {reason}: power, energy and tokens per joule not measured (JSON fields are null)",
              file=sys.stderr)
    monitor = Monitor(args, gpu)
    sampler = threading.Thread(target=monitor.loop, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    exit_code = None
    interrupted = False
    proc = None
    try:
        if command:
            try:
                proc = subprocess.Popen(command)
            except OSError as exc:
                print(f"{PROG}: error: cannot run {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
                exit_code = 127
            else:
                try:
                    exit_code = proc.wait(timeout=args.duration)
                except subprocess.TimeoutExpired:
                    print(f"{PROG}: --duration {args.duration:g} s passed; stopping the command", file=sys.stderr)
                    proc.send_signal(signal.SIGINT)
                    try:
                        exit_code = proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        exit_code = proc.wait()
        elif args.duration is not None:
            time.sleep(max(0.0, args.duration))
        elif gpu is not None:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        interrupted = True
        if proc is not None and proc.poll() is None:
            try:
                exit_code = proc.wait(timeout=10)  # the command got the same Ctrl-C
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_code = proc.wait()
    finally:
        monitor.stop_event.set()
        sampler.join(timeout=args.interval + 5)
    elapsed = time.monotonic() - t0
    report = summarize(args, gpu.info() if gpu else None, reason, monitor.samples, monitor.tokens_reason, command,
                       exit_code, elapsed)
    if interrupted:
        report["interrupted"] = True
    write_json(args.output_json, report)
    if gpu is not None and not args.quiet:
        print(f"{PROG}: {elapsed:.1f} s, energy {_f(report['energy_j'])} J, avg power {_f(report['avg_power_w'])} W, "
              f"max temp {_f(report['max_temperature_c'])} C, generated tokens {_f(report['generated_tokens'], 0)}, "
              f"tokens/J {_f(report['tokens_per_joule'], 3)}"
              + (" (" + report["tokens_per_joule_reason"] + ")" if report["tokens_per_joule_reason"] else "")
              + (", SLOWDOWNS: " + ", ".join(k for k, v in report["slowdown_samples"].items() if v)
                 if report["slowdown_detected"] else ""), file=sys.stderr)
    if command:
        if exit_code is None:
            return EXIT_USAGE
        return exit_code if exit_code >= 0 else 128 - exit_code  # killed by a signal: shell convention
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
