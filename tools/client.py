"""tritonclient plumbing shared by the tools: the client module of a protocol, model configuration, error codes."""
from __future__ import annotations

from typing import Mapping

from tools.cli import ToolError


def client_module(protocol: str):
    """tritonclient.grpc or tritonclient.http."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    elif protocol == "http":
        import tritonclient.http as module
    else:
        raise ToolError(f"unknown protocol {protocol!r} (grpc or http)")
    return module


def make_client(protocol: str, url: str, **kwargs):
    """A synchronous tritonclient for 'grpc' or 'http'."""
    return client_module(protocol).InferenceServerClient(url, **kwargs)


def close_client(client) -> None:
    """Close a synchronous tritonclient client once. Its __del__ closes it again, and under Locust's gevent each
    close of a gRPC channel decrements gRPC's count of gevent channels: a locust whose closed clients were left to
    garbage collection at exit hung in that second close (tests/integration/test_tools.py, 2026-12-01)."""
    try:
        client.close()
    finally:
        client.close = lambda: None  # what __del__ calls


def model_config(client, model: str) -> dict:
    """The model's configuration as a dict (gRPC and HTTP sync clients)."""
    try:
        return client.get_model_config(model, as_json=True)
    except TypeError:  # the HTTP client has no as_json and returns a dict already
        return client.get_model_config(model)


def decoupled_from_config(config: Mapping) -> bool:
    """Whether a model config (gRPC or HTTP JSON shape) is decoupled, i.e. streams."""
    cfg = config.get("config", config)
    return bool(cfg.get("model_transaction_policy", {}).get("decoupled", False))


def max_batch_size_from_config(config: Mapping) -> int:
    """A model config's max_batch_size (gRPC and HTTP JSON shapes); 0 when the model does not batch."""
    cfg = config.get("config", config)
    return int(cfg.get("max_batch_size", 0))


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
