"""gpt_large_stream under many short streams while cancellation is checked all the time (CPU, tiny preset).

Asking Triton 2.51 whether a request was cancelled after its final response went out crashed tritonserver
(SIGSEGV in TRITONBACKEND_ResponseFactoryIsCancelled: the response factory is freed with the final response).
16 clients x 40 short streams, every running request checked every millisecond: before the fix (a lock in
gptserve.triton.inflight_model.TritonSink) the server died within a second.
"""
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.test_stream import PROMPT, STREAM, Stream
from tests.integration.triton_server import REPO_ROOT, TritonServer, configure

pytestmark = pytest.mark.integration

CLIENTS, REQUESTS = 16, 40


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    shutil.copytree(REPO_ROOT / "model_repository", repo)
    cfg = repo / STREAM / "config.pbtxt"
    cfg.write_text(configure(cfg.read_text(), {"cancel_check_ms": 1}))
    with TritonServer(repo, models=[STREAM], startup_timeout=240) as srv:
        yield srv


def test_short_streams_finishing_while_cancellation_is_checked(server):
    def client(k):
        s = Stream(server)
        try:
            finals = []
            for i in range(REQUESTS):
                s.send(f"{k}-{i}", input_ids=PROMPT, max_tokens=1 + i % 3, stream=True)
                finals.append(s.collect(timeout=60)[-1])
            return finals
        finally:
            s.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        finals = [f for finals in pool.map(client, range(CLIENTS)) for f in finals]
    assert len(finals) == CLIENTS * REQUESTS
    assert all(rid is not None and final for rid, _, final, _ in finals), [f[1] for f in finals if f[0] is None][:3]
    assert server.is_alive() and server.http_client().is_server_ready()
