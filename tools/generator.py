"""One blocking generation at a time on a synchronous tritonclient: unary infer, or the gRPC stream for decoupled
models. Used by the closed-loop tools (warmup, locustfile)."""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Optional

from tools.cli import ToolError
from tools.client import close_client, error_code, make_client, one_line
from tools.payload import is_final_response, reported_tokens, response_ids


@dataclass
class Generation:
    """What one request returned; times are seconds after the call started."""

    ok: bool
    output_ids: list = field(default_factory=list)  # every id of every response
    num_output_tokens: Optional[int] = None  # the server's count, when it sent one
    first_token_s: Optional[float] = None  # streaming only: the first response carrying a token
    end_s: Optional[float] = None
    error_code: str = ""
    error: str = ""

    @property
    def output_tokens(self) -> int:
        return self.num_output_tokens if self.num_output_tokens is not None else len(self.output_ids)


class BlockingGenerator:
    """Not thread-safe: give each thread (or Locust user) its own. A stream is opened on first use and reused."""

    def __init__(self, protocol: str, url: str, model: str, decoupled: bool, timeout: float = 300.0):
        if decoupled and protocol != "grpc":
            raise ToolError(f"model {model!r} is decoupled (streaming): it is served over the gRPC stream only; "
                            "use --protocol grpc")
        self.protocol, self.url, self.model, self.decoupled, self.timeout = protocol, url, model, decoupled, timeout
        self.client = self._new_client()
        self._queue: Optional[queue.Queue] = None
        self._n = 0

    def _new_client(self):
        kwargs = {"network_timeout": self.timeout, "connection_timeout": self.timeout} \
            if self.protocol == "http" else {}
        return make_client(self.protocol, self.url, **kwargs)

    def close(self) -> None:
        try:
            if self._queue is not None:
                self.client.stop_stream(cancel_requests=True)
            close_client(self.client)
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
            return Generation(True, response_ids(result), reported_tokens(result), None, time.perf_counter() - t0)
        except Exception as exc:
            return Generation(False, end_s=time.perf_counter() - t0, error_code=error_code(exc), error=one_line(exc))

    def _stream(self, inputs, outputs, t0: float) -> Generation:
        if self._queue is None:
            self._queue = q = queue.Queue()
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
                self.client, self._queue = self._new_client(), None
                gen.end_s, gen.error_code, gen.error = time.perf_counter() - t0, "TIMEOUT", \
                    f"no final response within {self.timeout:g} s"
                return gen
            if error is not None:
                gen.end_s, gen.error_code, gen.error = at - t0, error_code(error), one_line(error)
                return gen
            if result.get_response().id != rid:
                continue  # a late response of an earlier (timed-out) request
            ids = response_ids(result)
            if ids and gen.first_token_s is None:
                gen.first_token_s = at - t0
            gen.output_ids.extend(ids)
            n = reported_tokens(result)
            if n is not None:
                gen.num_output_tokens = n
            if is_final_response(result):
                gen.ok, gen.end_s = True, at - t0
                return gen
