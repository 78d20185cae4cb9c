"""The generate gate: clear 400s for the two bad /generate bodies Triton 2.51 rejects before any model runs.

tritonserver's HTTP frontend turns a /generate JSON body into tensors itself. A value of the wrong JSON type
("temperature": "hot") makes it answer 500 "Unable to parse 'data': attempt to access JSON non-number as double",
and a body that sets none of the model's inputs ({"prompt": "hi"}) 400 "request has 0 inputs": neither names the
field. Caddy sends /v2/models/<model>[/versions/<v>]/generate[_stream] here; the gate checks the body against the
model's inputs (their datatypes from Triton's model metadata) and answers those two cases with a 400 that names
the field (and stream=true sent to /generate, which Triton answers 200 with an error body, with a 400 pointing to
/generate_stream); every other request goes on to tritonserver unchanged, and its answer (a JSON reply or an event stream)
comes back as it arrives. Stdlib only.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

GENERATE = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/generate(_stream)?$")
NUMBER = "a number"
KINDS = {"BOOL": "true or false", "BYTES": "a string"}  # every other Triton datatype is numeric
CHUNK = 1 << 16


def describe(datatype: str) -> str:
    return KINDS.get(datatype, NUMBER)


def leaves(value):
    """The values of a JSON value, nested lists flattened."""
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def fits(datatype: str, value) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype == "BYTES":
        return isinstance(value, str)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def json_kind(value) -> str:
    names = {bool: "true/false", str: "a string", dict: "an object", type(None): "null", list: "a list"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), NUMBER)


def problem(model: str, inputs: dict[str, str], body, streaming: bool = False) -> str | None:
    """Why Triton would refuse this body without naming the field (or answer it with 200 and an error), or None
    when it may go on. streaming: the request came to /generate_stream."""
    if not isinstance(body, dict):
        return None  # Triton's own answer names the problem
    if body.get("stream") is True and not streaming:  # /generate takes one response: Triton says 200 + error
        return f"stream=true needs /v2/models/{model}/generate_stream; /generate returns one response"
    named = [key for key in body if key in inputs]
    if not named:
        return (f"the request sets no input of model '{model}' (its fields: {sorted(body)}); "
                f"the inputs are {sorted(inputs)}")
    for key in named:
        bad = [v for v in leaves(body[key]) if not fits(inputs[key], v)]
        if bad:
            return (f"field '{key}' must be {describe(inputs[key])} ({inputs[key]}) or a list of them, "
                    f"got {json_kind(bad[0])}")
    return None


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None = None):
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class Gate(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, listen: Path, triton: Path):
        self.triton = triton
        self._inputs: dict[tuple, dict[str, str]] = {}  # (model, version) -> input name -> datatype
        super().__init__(str(listen), GateHandler)
        self._thread = threading.Thread(target=self.serve_forever, name="generate-gate", daemon=True)

    def start(self) -> "Gate":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def inputs_of(self, model: str, version: str | None) -> dict[str, str] | None:
        """The model's input datatypes from Triton's metadata (remembered); None when Triton does not know it."""
        key = (model, version)
        if key not in self._inputs:
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
            connection = UnixConnection(self.triton, timeout=10)
            try:
                connection.request("GET", path)
                reply = connection.getresponse()
                if reply.status != 200:
                    return None
                self._inputs[key] = {i["name"]: i["datatype"] for i in json.loads(reply.read())["inputs"]}
            finally:
                connection.close()
        return self._inputs[key]


class GateHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Gate

    def log_message(self, *args):  # Caddy and tritonserver log requests already
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        match = GENERATE.match(self.path.split("?", 1)[0])
        if match:
            model, version, streaming = match.groups()
            inputs = self.server.inputs_of(model, version)
            try:
                reason = problem(model, inputs, json.loads(body), bool(streaming)) if inputs else None
            except ValueError:
                reason = None  # not JSON: Triton's own answer says so
            if reason:
                return self._reply(400, json.dumps({"error": reason}).encode())
        self._forward(body)

    def _reply(self, status: int, payload: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, body: bytes):
        connection = UnixConnection(self.server.triton)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
            connection.request("POST", self.path, body=body, headers=headers)
            reply = connection.getresponse()
            self.send_response(reply.status)
            for name, value in reply.getheaders():
                if name.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(name, value)
            if reply.getheader("Content-Length") is not None:  # one JSON reply
                self.end_headers()
                self.wfile.write(reply.read())
                return
            self.send_header("Transfer-Encoding", "chunked")  # an event stream goes on as it arrives
            self.end_headers()
            while data := reply.read1(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        finally:
            connection.close()
