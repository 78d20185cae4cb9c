"""Time to first token of requests sent together to gpt_large_stream, with and without Triton's dynamic batcher.

    python -m bench.dispatch --rounds 15 --burst 4

Starts tritonserver (CPU, tiny preset, 8 slots, 4 ms per engine step) once per variant on a copy of
model_repository: `as shipped` (no dynamic batcher) and `dynamic batcher` (the block the model had before:
preferred batch 1, no queue delay, queue policy 64 requests / 5 s). Each round sends --burst streaming requests
(20 new tokens each) at once on one gRPC stream and records each one's first-token time; prints percentiles per
variant as JSON. Triton 2.51's batcher sleeps 500 ms
when its queue is empty and is not woken by a request that arrives while execute() runs: such a request waits
for the next poll.
"""
from __future__ import annotations

import argparse
import json
import queue
import shutil
import tempfile
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

from tests.integration.triton_server import REPO_ROOT, TritonServer, configure, make_inputs

MODEL = "gpt_large_stream"
DYNAMIC_BATCHER = """dynamic_batching {
  preferred_batch_size: [ 1 ]
  max_queue_delay_microseconds: 0
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 5000000
    max_queue_size: 64
  }
}
"""


def repository(variant: str) -> Path:
    repo = Path(tempfile.mkdtemp(prefix="dispatch-")) / "model_repository"
    shutil.copytree(REPO_ROOT / "model_repository", repo)
    cfg = repo / MODEL / "config.pbtxt"
    text = configure(cfg.read_text(), {"step_delay_ms": 4}, max_batch_size=8)
    cfg.write_text(text + (DYNAMIC_BATCHER if variant == "dynamic batcher" else ""))
    return repo


def first_token_times(server: TritonServer, rounds: int, burst: int) -> list[float]:
    times = []
    for _ in range(rounds):
        events: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: events.put((result, error, time.monotonic())))
        sent = {}
        for i in range(burst):
            sent[str(i)] = time.monotonic()
            client.async_stream_infer(MODEL, make_inputs(grpcclient, input_ids=[10, 20, 30], max_tokens=20,
                                                         stream=True), request_id=str(i))
        first, finals = {}, 0
        while finals < burst:
            result, error, at = events.get(timeout=30)
            if error is not None:
                raise RuntimeError(f"request failed: {error}")
            response = result.get_response()
            first.setdefault(response.id, at - sent[response.id])
            finals += response.parameters["triton_final_response"].bool_param
        client.stop_stream()
        client.close()
        times += first.values()
        time.sleep(0.2)
    return sorted(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--burst", type=int, default=4)
    args = parser.parse_args(argv)
    report = {}
    for variant in ("as shipped", "dynamic batcher"):
        with TritonServer(repository(variant), models=[MODEL], startup_timeout=300) as server:
            t = first_token_times(server, args.rounds, args.burst)
        report[variant] = {f"ttft_{name}_ms": round(1000 * t[min(len(t) - 1, int(q * len(t)))], 1)
                           for name, q in (("p50", 0.5), ("p90", 0.9), ("max", 1.0))}
    print(json.dumps({"burst": args.burst, "rounds": args.rounds, **report}, indent=1))


if __name__ == "__main__":
    main()
