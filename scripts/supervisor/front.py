"""The HTTP front: Caddy on the public HTTP and metrics ports, tritonserver's own HTTP servers on Unix sockets.

Why: tritonserver 2.51's HTTP library (libevhtp) parses a POST body sent as application/x-www-form-urlencoded
into two variable-length arrays on the worker thread's stack (evhtp_parse_query_wflags), so a body of half the
thread stack (4 MB with the usual 8 MB) overflows it and the whole server dies with SIGSEGV; 2.51 has no body
limit. Caddy answers 413 to any body over the cap before it reaches Triton, and tritonserver is given a thread
stack of 2 x cap + 8 MiB so that every body Caddy lets through parses safely. Triton's HTTP and metrics servers
listen on Unix sockets in a private directory, so nothing can reach them around the cap. No idle connections are
kept to them: tritonserver's shutdown waits for every open HTTP connection. /generate requests pass the generate
gate first (supervisor/gate.py), which answers the bad bodies Triton would not name clearly.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

MIB = 1 << 20
METRICS_MAX_BODY = 64 * 1024  # the metrics endpoint takes no body


def thread_stack_bytes(max_body: int) -> int:
    """Stack every tritonserver thread needs so that a form-encoded body of max_body bytes parses safely."""
    return 2 * max_body + 8 * MIB


def caddyfile(host: str, http_port: int, metrics_port: int, sockets: Path, max_body: int, grace_s: int) -> str:
    too_large = f'{{"error":"request body larger than the server\'s limit of {max_body} bytes"}}'
    return f"""{{
	admin off
	auto_https off
	persist_config off
	grace_period {grace_s}s
	log {{
		level ERROR
	}}
	servers {{
		timeouts {{
			read_header 30s
		}}
	}}
}}
http://:{http_port} {{
	bind {host}
	request_body {{
		max_size {max_body}
	}}
	@generate path_regexp ^/v2/models/[^/]+(/versions/[^/]+)?/generate(_stream)?$
	handle @generate {{
		reverse_proxy unix/{sockets}/gate.sock {{
			# Caddy has answered the client's Expect: 100-continue; a second 100 from the gate lost the reply body
			header_up -Expect
			flush_interval -1
			transport http {{
				keepalive off
			}}
		}}
	}}
	handle {{
		reverse_proxy unix/{sockets}/http.sock {{
			flush_interval -1
			transport http {{
				keepalive off
			}}
		}}
	}}
	handle_errors 413 {{
		header Content-Type application/json
		respond `{too_large}` 413
	}}
}}
http://:{metrics_port} {{
	bind {host}
	request_body {{
		max_size {METRICS_MAX_BODY}
	}}
	reverse_proxy unix/{sockets}/metrics.sock {{
		transport http {{
			keepalive off
		}}
	}}
}}
"""


class Front:
    """Caddy in front of tritonserver's HTTP and metrics endpoints."""

    def __init__(self, caddy: str, host: str, http_port: int, metrics_port: int, max_body: int, grace_s: int):
        self.caddy = caddy
        self.dir = Path(tempfile.mkdtemp(prefix="gptserve-front-"))  # mode 0700: only this user reaches Triton
        self.config = self.dir / "Caddyfile"
        self.config.write_text(caddyfile(host, http_port, metrics_port, self.dir, max_body, grace_s))
        self.max_body = max_body
        self.process: subprocess.Popen | None = None

    def triton_args(self) -> list[str]:
        return [f"--http-address=unix:{self.dir}/http.sock", f"--metrics-address=unix:{self.dir}/metrics.sock"]

    def start(self, spawn) -> None:
        env = dict(os.environ, XDG_DATA_HOME=str(self.dir), XDG_CONFIG_HOME=str(self.dir))
        self.process = spawn([self.caddy, "run", "--adapter", "caddyfile", "--config", str(self.config)], env=env)

    def remove_files(self) -> None:
        for path in sorted(self.dir.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        self.dir.rmdir()
