"""Shared helpers for the client-side tools (warmup, load_test, locustfile, power_monitor).

The tools talk to a running tritonserver only: tritonclient (gRPC/HTTP), HTTP health and the Prometheus metrics
endpoint. Nothing here imports the gptserve package, so the tools also run on a machine that has only the
client packages (tritonclient, numpy; matplotlib/tqdm/nvidia-ml-py/locust where a tool uses them).

Contents:
  * exit codes and ToolError (usage / connection problems -> exit 2)
  * address handling (``--url`` with or without a scheme, the default metrics URL)
  * percentile statistics (numpy's default "linear" interpolation)
  * Prometheus text parsing and scraping (MetricsSnapshot, counter deltas)
  * request building for tritonclient (gRPC, gRPC aio and HTTP share InferInput semantics)
  * model readiness / decoupled (streaming) detection
  * energy measurement over a window (Triton's nv_energy_consumption, else local NVML, else a reason)
  * SLO parsing and JSON writing
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # a check, an SLO or the error budget failed
EXIT_USAGE = 2  # bad arguments, server unreachable or not ready (argparse also exits 2)

DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT, DEFAULT_METRICS_PORT = 8000, 8001, 8002
DEFAULT_MODEL = "gpt_large"

# Token ids the prompts are drawn from. Byte-level ids 0..255 are valid for every model this repository serves
# (the tiny preset's vocabulary of 512 and GPT-2's 50257), so random prompts never trip the vocabulary check.
DEFAULT_VOCAB = 256


class ToolError(Exception):
    """A usage or connection problem: the tool prints one line and exits with EXIT_USAGE."""


# ---------------------------------------------------------------------------------------------------- addresses
def strip_scheme(url: str) -> str:
    """'grpc://h:p/' or 'http://h:p' -> 'h:p' (tritonclient wants host:port)."""
    url = url.strip()
    url = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", url)
    return url.rstrip("/")


def host_of(url: str) -> str:
    hostport = strip_scheme(url)
    if hostport.startswith("["):  # [ipv6]:port
        return hostport[: hostport.index("]") + 1]
    return hostport.rsplit(":", 1)[0] if ":" in hostport else hostport


def server_url(url: Optional[str], protocol: str) -> str:
    """The inference endpoint as host:port; the protocol's default port on 127.0.0.1 when url is None."""
    if not url:
        port = DEFAULT_GRPC_PORT if protocol == "grpc" else DEFAULT_HTTP_PORT
        return f"127.0.0.1:{port}"
    hostport = strip_scheme(url)
    if ":" not in hostport.lstrip("[").split("]")[-1]:
        hostport += f":{DEFAULT_GRPC_PORT if protocol == 'grpc' else DEFAULT_HTTP_PORT}"
    return hostport


def metrics_url(explicit: Optional[str], inference_url: str) -> Optional[str]:
    """--metrics-url, or http://<host of the inference url>:8002/metrics; None for "none" (no server counters)."""
    if explicit and explicit.strip().lower() == "none":
        return None
    if explicit:
        url = explicit.strip()
        if "://" not in url:
            url = "http://" + url
        if not re.search(r"://[^/]+/.+", url):
            url = url.rstrip("/") + "/metrics"
        return url
    return f"http://{host_of(inference_url)}:{DEFAULT_METRICS_PORT}/metrics"


# ---------------------------------------------------------------------------------------------------- statistics
PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], q: float) -> Optional[float]:
    """q-th percentile (0..100) of already sorted values, linear interpolation (numpy's default method)."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = (n - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo))


def summarize(values: Iterable[Optional[float]], percentiles: Sequence[int] = PERCENTILES) -> dict:
    """{count, mean, std, min, max, p50, p90, ...}; None values are skipped; every statistic None when empty."""
    vals = sorted(float(v) for v in values if v is not None and not math.isnan(v))
    out: dict[str, Any] = {"count": len(vals)}
    if vals:
        mean = sum(vals) / len(vals)
        out.update(mean=mean, std=math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)),
                   min=vals[0], max=vals[-1])
    else:
        out.update(mean=None, std=None, min=None, max=None)
    for q in percentiles:
        out[f"p{q}"] = percentile(vals, q)
    return out


# ---------------------------------------------------------------------------------------------------- metrics
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Parse the Prometheus text exposition format (comments and malformed lines are skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m.group(2) or "")}
        samples.append(Sample(m.group(1), labels, value))
    return samples


@dataclass
class MetricsSnapshot:
    """One scrape of the metrics endpoint."""

    samples: list[Sample] = field(default_factory=list)

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == str(v) for k, v in labels.items())]

    def sum(self, name: str, **labels: str) -> Optional[float]:
        """Sum of the matching samples; None when the metric is absent."""
        found = self.select(name, **labels)
        return sum(s.value for s in found) if found else None

    def delta(self, before: "MetricsSnapshot", name: str, **labels: str) -> Optional[float]:
        """Counter increase from `before` to this snapshot (None when absent in either)."""
        a, b = self.sum(name, **labels), before.sum(name, **labels)
        return None if a is None or b is None else a - b


def scrape(url: str, timeout: float = 5.0) -> MetricsSnapshot:
    """Fetch and parse the metrics endpoint; ToolError when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ToolError(f"cannot read metrics from {url}: {getattr(exc, 'reason', exc)}") from None
    return MetricsSnapshot(parse_metrics(text))


def try_scrape(url: Optional[str], timeout: float = 5.0) -> Optional[MetricsSnapshot]:
    if not url:
        return None
    try:
        return scrape(url, timeout)
    except ToolError:
        return None


def scrape_settled(url: str, names: Sequence[str], labels: Mapping[str, str], *, interval: float = 0.1,
                   timeout: float = 3.0) -> MetricsSnapshot:
    """Scrape until the given counters stop moving (two equal reads `interval` apart) or `timeout` passes.

    A python-backend model may increment its counters just after sending a response, so the first scrape after
    the last response can miss the last increments.
    """
    def key(snap):
        return tuple(snap.sum(n, **labels) for n in names)

    prev = scrape(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        cur = scrape(url)
        if key(cur) == key(prev):
            return cur
        prev = cur
    return prev


# Counters the load test and warmup read for the window, and the labels they carry.
TRITON_COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                   "nv_inference_exec_count")
GPT_COUNTERS = ("gpt_generated_tokens_total", "gpt_prompt_tokens_total", "gpt_invalid_requests_total",
                "gpt_unavailable_requests_total", "gpt_cancelled_requests_total", "gpt_failed_requests_total")


def server_counter_deltas(before: MetricsSnapshot, after: MetricsSnapshot, model: str) -> dict:
    """Deltas of Triton's and the model's counters for `model` (None for counters the server does not export)."""
    out = {name: after.delta(before, name, model=model) for name in TRITON_COUNTERS + GPT_COUNTERS}
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
                 "nv_inference_request_failure") + GPT_COUNTERS:
        if out[name] is not None:
            out[name] = int(round(out[name]))
    return out


def histogram_delta_mean(before: MetricsSnapshot, after: MetricsSnapshot, name: str, **labels) -> Optional[float]:
    """Mean of a Prometheus histogram's observations between two snapshots (None if none)."""
    s = after.delta(before, f"{name}_sum", **labels)
    c = after.delta(before, f"{name}_count", **labels)
    return None if not c or s is None else s / c


# ---------------------------------------------------------------------------------------------------- requests
_TRITON_DTYPES = {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": np.bool_, "BYTES": np.object_}


def infer_input(module, name: str, value, triton_type: str):
    """One InferInput with a leading batch dimension of 1 (module: tritonclient.grpc or tritonclient.http).

    Scalars become [1, 1] tensors, sequences [1, n]."""
    arr = np.asarray(value, dtype=_TRITON_DTYPES[triton_type])
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = arr.reshape(1, -1)
    tensor = module.InferInput(name, list(arr.shape), triton_type)
    tensor.set_data_from_numpy(arr)
    return tensor


def build_inputs(module, prompt_ids: Sequence[int], max_tokens: int, *, ignore_eos: bool = True,
                 temperature: Optional[float] = None, seed: Optional[int] = None,
                 stream: Optional[bool] = None) -> list:
    """Inputs of one generation request (batch 1) in the model's TensorRT-LLM-style interface.

    ignore_eos sends end_id=-1 so exactly max_tokens tokens are generated (as `--ignore-eos` in vLLM's
    benchmark); stream=None leaves the `stream` input out (the non-decoupled model rejects stream=true)."""
    inputs = [
        infer_input(module, "input_ids", np.asarray(prompt_ids, dtype=np.int32), "INT32"),
        infer_input(module, "max_tokens", max_tokens, "INT32"),
        infer_input(module, "exclude_input_in_output", True, "BOOL"),
    ]
    if ignore_eos:
        inputs.append(infer_input(module, "end_id", -1, "INT32"))
    if temperature is not None:
        inputs.append(infer_input(module, "temperature", float(temperature), "FP32"))
    if seed is not None:
        inputs.append(infer_input(module, "seed", int(seed), "UINT64"))
    if stream is not None:
        inputs.append(infer_input(module, "stream", bool(stream), "BOOL"))
    return inputs


def requested_outputs(module, names: Sequence[str] = ("output_ids", "num_output_tokens")) -> list:
    """Only what the tools read: token ids and the token count (the text is not transferred)."""
    return [module.InferRequestedOutput(n) for n in names]


def output_token_count(result) -> tuple[Optional[int], int]:
    """(num_output_tokens if the response carries it, number of ids in output_ids) of one InferResult."""
    n = result.as_numpy("num_output_tokens")
    ids = result.as_numpy("output_ids")
    return (int(n.reshape(-1)[0]) if n is not None and n.size else None), (0 if ids is None else int(ids.size))


def is_final_response(result) -> bool:
    """Whether a streamed response is flagged final (tritonclient gRPC: the triton_final_response parameter)."""
    try:
        params = result.get_response().parameters
        return "triton_final_response" in params and bool(params["triton_final_response"].bool_param)
    except Exception:
        return False


def random_prompts(rng: np.random.Generator, n: int, len_min: int, len_max: int,
                   vocab: int = DEFAULT_VOCAB) -> list[np.ndarray]:
    """n prompts of random token ids in [0, vocab), lengths uniform in [len_min, len_max]."""
    lengths = rng.integers(len_min, len_max + 1, size=n)
    return [rng.integers(0, vocab, size=int(k), dtype=np.int32) for k in lengths]


@dataclass
class Generation:
    """What one blocking request returned; times are seconds after the call started."""

    ok: bool
    output_ids: list = field(default_factory=list)
    num_output_tokens: Optional[int] = None
    first_token_s: Optional[float] = None  # streaming only: the first response carrying a token
    end_s: Optional[float] = None
    error_code: str = ""
    error: str = ""

    @property
    def output_tokens(self) -> int:
        return self.num_output_tokens if self.num_output_tokens is not None else len(self.output_ids)


class BlockingGenerator:
    """One request at a time on a synchronous tritonclient: unary infer, or the gRPC stream for decoupled models.

    Not thread-safe: give each thread (or Locust user) its own. A stream is opened on first use and reused.
    """

    def __init__(self, protocol: str, url: str, model: str, decoupled: bool, timeout: float = 300.0):
        if decoupled and protocol != "grpc":
            raise ToolError(f"model {model!r} is decoupled (streaming): it is served over the gRPC stream only; "
                            "use --protocol grpc")
        self.protocol, self.model, self.decoupled, self.timeout = protocol, model, decoupled, timeout
        self.url = url
        self.client = make_client(protocol, url, **self._client_kwargs())
        self._queue = None
        self._n = 0

    def _client_kwargs(self) -> dict:
        return {"network_timeout": self.timeout, "connection_timeout": self.timeout} \
            if self.protocol == "http" else {}

    def close(self) -> None:
        try:
            if self._queue is not None:
                self.client.stop_stream(cancel_requests=True)
            self.client.close()
        except Exception:
            pass

    def generate(self, inputs, outputs=None) -> Generation:
        self._n += 1
        t0 = time.perf_counter()
        try:
            if self.decoupled:
                return self._stream(inputs, outputs, t0)
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            result = self.client.infer(self.model, inputs, outputs=outputs, **kwargs)
            end = time.perf_counter() - t0
            ids = result.as_numpy("output_ids")
            n, _ = output_token_count(result)
            return Generation(True, [] if ids is None else ids.reshape(-1).tolist(), n, None, end)
        except Exception as exc:
            return Generation(False, end_s=time.perf_counter() - t0, error_code=error_code(exc),
                              error=one_line(exc))

    def _stream(self, inputs, outputs, t0: float) -> Generation:
        import queue

        if self._queue is None:
            self._queue = queue.Queue()
            q = self._queue
            self.client.start_stream(callback=lambda result, error: q.put((result, error, time.perf_counter())))
        rid = str(self._n)
        self.client.async_stream_infer(self.model, inputs, outputs=outputs, request_id=rid,
                                       enable_empty_final_response=True)
        gen = Generation(False)
        deadline = t0 + self.timeout
        while True:
            try:
                result, error, at = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                self.close()  # the stream is in an unknown state: start a new one next time
                self.client, self._queue = make_client(self.protocol, self.url, **self._client_kwargs()), None
                gen.end_s, gen.error_code, gen.error = time.perf_counter() - t0, "TIMEOUT", \
                    f"no final response within {self.timeout:g} s"
                return gen
            if error is not None:
                gen.end_s, gen.error_code, gen.error = at - t0, error_code(error), one_line(error)
                return gen
            if result.get_response().id != rid:
                continue  # a late response of an earlier (timed-out) request
            ids = result.as_numpy("output_ids")
            if ids is not None and ids.size:
                if gen.first_token_s is None:
                    gen.first_token_s = at - t0
                gen.output_ids.extend(ids.reshape(-1).tolist())
            n, _ = output_token_count(result)
            if n is not None:
                gen.num_output_tokens = n
            if is_final_response(result):
                gen.ok, gen.end_s = True, at - t0
                return gen


def client_module(protocol: str):
    """tritonclient.grpc or tritonclient.http."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    elif protocol == "http":
        import tritonclient.http as module
    else:
        raise ToolError(f"unknown protocol {protocol!r} (grpc or http)")
    return module


# ---------------------------------------------------------------------------------------------------- server state
def decoupled_from_config(config: Mapping) -> bool:
    """Whether a model config (JSON from get_model_config, gRPC or HTTP shape) is decoupled (streams)."""
    cfg = config.get("config", config)
    return bool(cfg.get("model_transaction_policy", {}).get("decoupled", False))


def make_client(protocol: str, url: str, **kwargs):
    """A synchronous tritonclient for 'grpc' or 'http'."""
    return client_module(protocol).InferenceServerClient(url, **kwargs)


def model_config(client, model: str) -> dict:
    """The model's configuration as a dict (works for gRPC and HTTP sync clients)."""
    try:
        return client.get_model_config(model, as_json=True)
    except TypeError:  # the HTTP client has no as_json and returns a dict already
        return client.get_model_config(model)


def wait_until_ready(client, model: str, timeout: float, poll: float = 0.5) -> float:
    """Wait until the server is live and `model` is ready; seconds waited. ToolError on timeout."""
    t0 = time.monotonic()
    last = "no answer"
    while True:
        try:
            if client.is_server_live() and client.is_model_ready(model):
                return time.monotonic() - t0
            last = f"model {model!r} not ready"
        except Exception as exc:  # connection refused while the server starts, etc.
            last = one_line(exc)
        if time.monotonic() - t0 >= timeout:
            raise ToolError(f"server not ready after {timeout:.0f} s ({last})")
        time.sleep(poll)


def error_code(exc) -> str:
    """A short error code for a failed request: the gRPC/HTTP status, or 'STREAM_ERROR' when none is carried
    (a gRPC stream carries the error message only)."""
    status = None
    try:
        status = exc.status()
    except Exception:
        pass
    if status:
        return str(status).replace("StatusCode.", "")
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.aio.AioRpcError (e.g. a stream deadline)
        try:
            return code().name
        except Exception:
            pass
    return "STREAM_ERROR" if hasattr(exc, "message") else type(exc).__name__


def one_line(exc) -> str:
    msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(msg).split())[:300]




# ---------------------------------------------------------------------------------------------------- energy
def nvml(gpu_indices: Optional[Sequence[int]] = None):
    """(pynvml module, [handles], None) when NVML works and has GPUs, else (None, [], reason)."""
    try:
        import pynvml
    except ImportError:
        return None, [], "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, [], f"no NVIDIA GPU/driver (NVML: {exc})"
    if count == 0:
        return None, [], "NVML reports no GPUs"
    indices = list(range(count)) if gpu_indices is None else list(gpu_indices)
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        return None, [], f"GPU index {bad[0]} out of range (this machine has {count})"
    return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices], None


def nvml_energy_j(pynvml, handles) -> Optional[float]:
    """Sum of the GPUs' total-energy counters in joules (None if a GPU does not support it)."""
    try:
        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles) / 1000.0
    except Exception:
        return None


class EnergyMeter:
    """Energy over a window, from the best source available:

    1. Triton's ``nv_energy_consumption`` counter (joules, all of the server's GPUs) on the metrics endpoint:
       measures the server wherever it runs; Triton refreshes it every --metrics-interval-ms (2 s by default),
       so windows much shorter than that are coarse.
    2. The local NVML total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ) of this machine's GPUs:
       right only when the server runs on this machine.
    3. None, with a reason.
    """

    def __init__(self, metrics_url: Optional[str] = None):
        self.metrics_url = metrics_url
        self.source: Optional[str] = None
        self.reason: Optional[str] = None
        self._start: Optional[float] = None
        self._nvml = None
        self._handles: list = []

    def _triton_energy(self) -> Optional[float]:
        snap = try_scrape(self.metrics_url)
        return None if snap is None else snap.sum("nv_energy_consumption")

    def start(self) -> None:
        reasons = []
        if self.metrics_url:
            value = self._triton_energy()
            if value is not None:
                self.source, self._start = "triton:nv_energy_consumption", value
                return
            reasons.append("the server exports no nv_energy_consumption (no GPU metrics)")
        pynvml, handles, why = nvml()
        if pynvml is not None:
            value = nvml_energy_j(pynvml, handles)
            if value is not None:
                self._nvml, self._handles = pynvml, handles
                self.source, self._start = "local:nvmlDeviceGetTotalEnergyConsumption", value
                return
            why = "the local GPU does not report a total-energy counter"
        reasons.append(why)
        self.reason = "; ".join(reasons)

    def stop(self) -> Optional[float]:
        """Joules since start(); None (see .reason) when no source."""
        if self._start is None:
            return None
        if self.source and self.source.startswith("triton"):
            value = self._triton_energy()
        else:
            value = nvml_energy_j(self._nvml, self._handles)
        if value is None:
            self.reason = f"{self.source} disappeared during the window"
            return None
        return value - self._start


def tokens_per_joule(tokens: Optional[float], joules: Optional[float], reason: Optional[str]):
    """(tokens_per_joule, reason): a reason whenever the value is None."""
    if joules is None:
        return None, reason or "no energy measurement"
    if joules <= 0:
        return None, (f"energy counter did not advance over the window ({joules:.3g} J); "
                      "the window is shorter than the counter's refresh interval")
    if not tokens:
        return None, "no tokens generated in the window"
    return tokens / joules, None


# ---------------------------------------------------------------------------------------------------- SLOs / output
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


def _clean(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def run_guarded(prog: str, fn, *args):
    """(fn(*args), None); or (None, EXIT_USAGE) after saying why, when fn raised ToolError or was interrupted."""
    try:
        return fn(*args), None
    except ToolError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
    return None, EXIT_USAGE


def write_json(path: Optional[str], obj: Mapping) -> None:
    """Write obj as indented JSON (NaN/inf -> null, parent directories created); no-op for path None."""
    if not path:
        return
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_clean(dict(obj)), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except Exception:
        return False
