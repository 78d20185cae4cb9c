"""Several instances of a model in one server (CPU, tiny preset): the instance-group choices of docs/deployment.md.

Two CPU instances of each model stand in for one instance per GPU: Triton gives a new request to an instance that
has room (with more than one instance, gpt_large_stream's execute() returns only once its instance could start
another request), and every metric carries its instance, so they report apart.
"""
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient

from tests.integration.test_stream import PROMPT, Stream, keep_done
from tests.integration.triton_server import REPO_ROOT, TritonServer, configure, make_inputs

pytestmark = pytest.mark.integration

STREAM, PLAIN = "gpt_large_stream", "gpt_large"
SLOTS = 4
TWO_CPU_INSTANCES = "\ninstance_group [ { count: 2, kind: KIND_CPU } ]\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    shutil.copytree(REPO_ROOT / "model_repository", repo)
    for model in (STREAM, PLAIN):
        cfg = repo / model / "config.pbtxt"
        cfg.write_text(configure(cfg.read_text(), {"step_delay_ms": 4} if model == STREAM else {},
                                 max_batch_size=SLOTS) + TWO_CPU_INSTANCES)
    with TritonServer(repo, models=[PLAIN, STREAM], startup_timeout=300) as srv:
        yield srv


def per_instance(server, name, model):
    text = server.metrics()
    found = re.findall(rf'^{name}{{([^}}]*)}} (\S+)$', text, re.M)
    values = {}
    for labels, value in found:
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("model") == model:
            values[fields["model_instance"]] = float(value)
    return values


def test_each_instance_reports_apart(server):
    slots = per_instance(server, "gpt_slots", STREAM)
    assert len(slots) == 2 and set(slots.values()) == {SLOTS}, slots
    assert len(per_instance(server, "gpt_max_abs_diff", PLAIN)) == 2
    assert all(labels_gpu == "cpu" for labels_gpu in re.findall(r'gpt_slots{[^}]*gpu="([^"]*)"', server.metrics()))


def test_stream_requests_go_to_the_instance_with_room(server):
    """2 x SLOTS long requests at once: each instance runs SLOTS of them (an instance whose slots are all taken
    takes no more, and each execute() takes one request), so none waits while a slot is free elsewhere."""
    s = Stream(server)
    try:
        for i in range(2 * SLOTS):
            s.send(f"r{i}", input_ids=PROMPT, max_tokens=900, stream=True)
        deadline = time.monotonic() + 120
        while True:  # the gauges follow the scheduler within a metrics-thread round
            running = per_instance(server, "gpt_inflight_requests", STREAM)
            waiting = per_instance(server, "gpt_waiting_requests", STREAM)
            if sorted(running.values()) == [SLOTS, SLOTS] and sum(waiting.values()) == 0:
                break
            assert time.monotonic() < deadline, (running, waiting)
            time.sleep(0.05)
        assert not keep_done(s)
    finally:
        s.close(cancel=True)


def test_static_batches_spread_over_instances(server):
    before = per_instance(server, "gpt_batch_size_count", PLAIN)

    def one(_):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            return client.infer(PLAIN, make_inputs(grpcclient, input_ids=PROMPT, max_tokens=20))
        finally:
            client.close()

    with ThreadPoolExecutor(4 * SLOTS) as pool:
        results = list(pool.map(one, range(2 * SLOTS)))
    assert all(r.as_numpy("num_output_tokens")[0, 0] == 20 for r in results)
    after = per_instance(server, "gpt_batch_size_count", PLAIN)
    assert len(after) == 2 and all(after[i] > before.get(i, 0) for i in after), (before, after)
