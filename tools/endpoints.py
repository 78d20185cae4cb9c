"""Where the server is: one rule for every tool and for scripts/release_check.sh.

  inference  --url HOST[:PORT] (a scheme is stripped; a missing port is the protocol's port below),
             else $HOST (default 127.0.0.1) with $GRPC_PORT (8001), or $HTTP_PORT (8000) for HTTP
  metrics    --metrics-url ('none': read no server counters),
             else http://<host of the inference address>:$METRICS_PORT (8002)/metrics

HTTP_PORT, GRPC_PORT and METRICS_PORT are the variables `make serve` (scripts/serve.sh) reads, so tools run with
the environment the server was started with find it. `python -m tools.endpoints` prints what it resolves to.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Mapping, Optional

from tools.cli import ToolError

DEFAULT_HOST = "127.0.0.1"
PORT_VARIABLES = {"grpc": "GRPC_PORT", "http": "HTTP_PORT", "metrics": "METRICS_PORT"}
DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}


@dataclass(frozen=True)
class Endpoints:
    protocol: str
    url: str  # host:port, as tritonclient wants it
    metrics_url: Optional[str]  # None: no server counters
    url_from: str  # how each was found, printed so that a stray variable is visible
    metrics_from: str

    def describe(self) -> str:
        return (f"server {self.protocol} {self.url} (from {self.url_from}), "
                f"metrics {self.metrics_url or 'not read'} (from {self.metrics_from})")


def strip_scheme(url: str) -> str:
    """'grpc://h:p/' or 'http://h:p' -> 'h:p'."""
    return re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", url.strip()).rstrip("/")


def host_of(hostport: str) -> str:
    if hostport.startswith("["):  # [ipv6]:port
        return hostport[: hostport.index("]") + 1]
    return hostport.rsplit(":", 1)[0] if ":" in hostport else hostport


def _has_port(hostport: str) -> bool:
    return ":" in hostport.lstrip("[").split("]")[-1]


def _port(kind: str, env: Mapping[str, str]) -> tuple[int, list[str]]:
    """(port of the grpc, http or metrics endpoint, [the variable it came from] or [])."""
    name = PORT_VARIABLES[kind]
    text = env.get(name, "").strip()
    if not text:
        return DEFAULT_PORTS[kind], []
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ToolError(f"{name}={text!r} is not a port number")
    return int(text), [name]


def _origin(parts: list[str]) -> str:
    return ", ".join(parts) if parts else "defaults"


def inference_address(url: Optional[str], protocol: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(host:port, where it came from)."""
    if url:
        hostport = strip_scheme(url)
        if _has_port(hostport):
            return hostport, "--url"
        port, used = _port(protocol, env)
        return f"{hostport}:{port}", _origin(["--url", *used])
    host = env.get("HOST", "").strip()
    port, used = _port(protocol, env)
    return f"{host or DEFAULT_HOST}:{port}", _origin((["HOST"] if host else []) + used)


def metrics_address(explicit: Optional[str], inference_url: str,
                    env: Mapping[str, str]) -> tuple[Optional[str], str]:
    """(metrics URL or None, where it came from)."""
    if explicit and explicit.strip().lower() == "none":
        return None, "--metrics-url none"
    if explicit:
        url = explicit.strip()
        if "://" not in url:
            url = "http://" + url
        if not re.search(r"://[^/]+/.+", url):
            url = url.rstrip("/") + "/metrics"
        return url, "--metrics-url"
    port, used = _port("metrics", env)
    return f"http://{host_of(inference_url)}:{port}/metrics", f"server host, {used[0] if used else 'default port'}"


def resolve(url: Optional[str] = None, metrics_url: Optional[str] = None, protocol: str = "grpc",
            env: Optional[Mapping[str, str]] = None) -> Endpoints:
    """The inference and metrics addresses from the flags, else the environment, else the defaults."""
    env = os.environ if env is None else env
    address, url_from = inference_address(url, protocol, env)
    metrics, metrics_from = metrics_address(metrics_url, address, env)
    return Endpoints(protocol, address, metrics, url_from, metrics_from)


def add_arguments(parser, protocol_help: str = "gRPC") -> None:
    """--url and --metrics-url, with the rule above in their help."""
    parser.add_argument("--url", default=None,
                        help=f"{protocol_help} endpoint HOST[:PORT] (scheme ignored); when not given $HOST:$GRPC_PORT, "
                             "127.0.0.1 and 8001 when unset ($HTTP_PORT, 8000, for HTTP)")
    parser.add_argument("--metrics-url", default=None,
                        help="Prometheus endpoint, 'none' to read no server counters; when not given "
                             "http://<server host>:$METRICS_PORT/metrics, port 8002 when unset")


def resolve_args(parser: argparse.ArgumentParser, args, protocol: str = "grpc") -> Endpoints:
    """Resolve args.url / args.metrics_url in place (parser.error on a bad variable); the Endpoints."""
    try:
        found = resolve(args.url, args.metrics_url, protocol)
    except ToolError as exc:
        parser.error(str(exc))
    args.url, args.metrics_url, args.endpoints = found.url, found.metrics_url, found
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.endpoints", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--shell", action="store_true",
                   help="print SERVER_URL=..., METRICS_URL=... ('none' when not read) and SERVER_FOUND=... "
                        "(the description) for a shell's eval")
    args = p.parse_args(argv)
    found = resolve_args(p, args, args.protocol)
    if args.shell:
        for name, value in (("SERVER_URL", found.url), ("METRICS_URL", found.metrics_url or "none"),
                            ("SERVER_FOUND", found.describe())):
            print(f"{name}={shlex.quote(value)}")
    else:
        print(found.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
