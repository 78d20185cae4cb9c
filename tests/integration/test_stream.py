"""gpt_large_stream on a real tritonserver (CPU, tiny preset): streaming, in-flight joins, cancellation, admission.

One server for the module, on a copy of the model repository where gpt_large_stream has 4 slots, room for 2
waiting requests (max_queue_size) and a 4 ms sleep after each engine step (step_delay_ms, a test hook), so "long"
generations last long enough to overlap on a fast CPU while the whole module stays short.

Streamed responses carry one or more new tokens each (tokens that pile up while a client is behind leave
together); the final response carries any not sent yet: every token arrives exactly once across them.
"""
import json
import queue
import re
import shutil
import time
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient

from tests.integration.triton_server import REPO_ROOT, TritonServer, configure, make_inputs

pytestmark = pytest.mark.integration

STREAM, PLAIN = "gpt_large_stream", "gpt_large"
SLOTS, STEP_MS = 4, 4
MAX_QUEUE = 2
PROMPT = [10, 20, 30, 40, 50, 60]

def inputs(**fields):
    return make_inputs(grpcclient, **fields)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    shutil.copytree(REPO_ROOT / "model_repository", repo)
    cfg = repo / STREAM / "config.pbtxt"
    cfg.write_text(configure(cfg.read_text(), {"step_delay_ms": STEP_MS, "queue_timeout_ms": 20000,
                                                 "max_queue_size": MAX_QUEUE}, max_batch_size=SLOTS))
    with TritonServer(repo, models=[PLAIN, STREAM], startup_timeout=240) as srv:
        yield srv


class Stream:
    """One gRPC bidirectional stream (one client); responses collected per request id."""

    def __init__(self, server):
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self.events = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.events.put((result, error, time.monotonic())))

    def send(self, request_id, model=STREAM, outputs=None, **fields):
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs] if outputs else None
        self.client.async_stream_infer(model, inputs(**fields), outputs=requested, request_id=str(request_id),
                                       enable_empty_final_response=True)

    def next(self, timeout=30):
        """(request id or None for errors, outputs dict or the error, final flag, arrival time)."""
        result, error, at = self.events.get(timeout=timeout)
        if error is not None:
            return None, error, True, at
        resp = result.get_response()
        final = resp.parameters["triton_final_response"].bool_param
        outputs = {o.name: result.as_numpy(o.name) for o in resp.outputs}
        return resp.id, outputs, final, at

    def collect(self, finals=1, timeout=30):
        """Every response until `finals` requests ended; list of next() tuples."""
        got, ended = [], 0
        deadline = time.monotonic() + timeout
        while ended < finals:
            item = self.next(max(0.1, deadline - time.monotonic()))
            got.append(item)
            ended += item[2]
        return got

    def close(self, cancel=False):
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def stream_once(server, **fields):
    s = Stream(server)
    try:
        s.send("r", **fields)
        return s.collect()
    finally:
        s.close()


def plain(server, **fields):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer(PLAIN, inputs(**fields))
        return {name: result.as_numpy(name) for name in ("output_ids", "text_output", "num_input_tokens",
                                                         "num_output_tokens")}
    finally:
        client.close()


def ids_of(responses):
    return [int(i) for _, out, _, _ in responses for i in out["output_ids"].reshape(-1)]


def text_of(responses):
    return "".join(out["text_output"].reshape(-1)[0].decode() for _, out, _, _ in responses)


# -- tests ------------------------------------------------------------------------------------------------------
def test_stream_carries_each_token_once_then_a_final(server):
    responses = stream_once(server, input_ids=PROMPT, max_tokens=12, stream=True)
    assert all(not final and out["output_ids"].shape[0] == 1 and out["output_ids"].shape[1] >= 1
               for _, out, final, _ in responses[:-1])
    assert responses[0][1]["output_ids"].shape == (1, 1)  # the first token goes alone, at once
    _, last, final, _ = responses[-1]
    assert final and last["output_ids"].ndim == 2 and last["output_ids"].shape[0] == 1
    assert len(ids_of(responses)) == 12
    assert int(last["num_input_tokens"][0, 0]) == len(PROMPT)
    assert int(last["num_output_tokens"][0, 0]) == 12


def test_responses_carry_only_the_requested_outputs(server):
    # What the load test asks for; the client sees the same either way (Triton prunes), the unit test
    # tests/unit/test_triton_io.py checks that the models leave the rest out themselves.
    wanted = ("output_ids", "num_output_tokens")
    s = Stream(server)
    try:
        s.send("r", outputs=wanted, input_ids=PROMPT, max_tokens=5, stream=True, end_id=-1)
        responses = s.collect()
    finally:
        s.close()
    assert all(set(out) == {"output_ids"} for _, out, _, _ in responses[:-1])  # a token: no counts yet
    _, last, final, _ = responses[-1]
    assert final and set(last) == set(wanted) and int(last["num_output_tokens"][0, 0]) == 5
    assert len(ids_of(responses)) == 5
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer(PLAIN, inputs(input_ids=PROMPT, max_tokens=5),
                              outputs=[grpcclient.InferRequestedOutput(name) for name in wanted])
    finally:
        client.close()
    assert {o.name for o in result.get_response().outputs} == set(wanted)


def test_greedy_tokens_equal_non_streaming_model_alone(server):
    want = plain(server, input_ids=PROMPT, max_tokens=20, exclude_input_in_output=True)
    streamed = stream_once(server, input_ids=PROMPT, max_tokens=20, stream=True)
    assert ids_of(streamed) == want["output_ids"].reshape(-1).tolist()
    assert text_of(streamed) == want["text_output"][0, 0].decode()
    whole = stream_once(server, input_ids=PROMPT, max_tokens=20, stream=False)  # one response with everything
    assert len(whole) == 1 and whole[0][2]
    assert whole[0][1]["output_ids"].tolist() == want["output_ids"].tolist()


def test_joining_mid_batch_equals_non_streaming_and_short_finishes_first(server):
    prompt = list(range(100, 140))
    want = plain(server, input_ids=prompt, max_tokens=10)["output_ids"].reshape(-1).tolist()
    want_long = plain(server, input_ids=PROMPT, max_tokens=150)["output_ids"].reshape(-1).tolist()
    long, short = Stream(server), Stream(server)
    try:
        long.send("long", input_ids=PROMPT, max_tokens=150, stream=True)
        first = [long.next() for _ in range(3)]  # the long one is generating
        short.send("short", input_ids=prompt, max_tokens=10, stream=True)
        short_responses = short.collect()
        short_done = short_responses[-1][3]
        long_responses = first + long.collect()
    finally:
        long.close()
        short.close()
    assert ids_of(short_responses) == want
    assert ids_of(long_responses) == want_long
    assert short_done < long_responses[-1][3]  # started later, finished first


def test_cancelled_stream_frees_its_slot_for_the_next_request(server):
    before = server.metric("gpt_cancelled_requests_total", model=STREAM)
    keep, victim, nxt = Stream(server), Stream(server), Stream(server)
    try:
        for i in range(SLOTS - 1):
            keep.send(f"keep{i}", input_ids=PROMPT[i:], max_tokens=900, stream=True)
        victim.send("victim", input_ids=[5, 6, 7], max_tokens=900, stream=True)
        victim.next()
        seen, deadline = set(), time.monotonic() + 30
        while seen != {f"keep{i}" for i in range(SLOTS - 1)}:  # every slot busy
            assert time.monotonic() < deadline, seen
            seen.add(keep.next()[0])
        nxt.send("next", input_ids=[9, 9], max_tokens=5, stream=False)
        with pytest.raises(queue.Empty):
            nxt.next(timeout=0.3)  # waits for a slot
        victim.close(cancel=True)
        t0 = time.monotonic()
        rid, out, final, at = nxt.next(timeout=10)
        assert rid == "next" and final and int(out["num_output_tokens"][0, 0]) == 5
        assert at - t0 < 1.0
        assert not keep_done(keep)  # the other sequences are still running
    finally:
        keep.close(cancel=True)
        nxt.close()
    deadline = time.monotonic() + 5
    while server.metric("gpt_cancelled_requests_total", model=STREAM) < before + SLOTS and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("gpt_cancelled_requests_total", model=STREAM) == before + SLOTS
    assert_idle(server)


def keep_done(s: Stream) -> bool:
    """Whether any request of s has ended (an error or a final response is queued)."""
    return any(error is not None or result.get_response().parameters["triton_final_response"].bool_param
               for result, error, _ in list(s.events.queue))


def assert_idle(server, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.metric("gpt_inflight_requests", model=STREAM) == 0 and \
                server.metric("gpt_waiting_requests", model=STREAM) == 0:
            return
        time.sleep(0.05)
    raise AssertionError("gpt_large_stream still has requests in flight")


def test_requests_beyond_the_slots_wait_in_the_model_up_to_max_queue_size(server):
    """Once every slot is taken, requests wait inside the model (gpt_waiting_requests), at most max_queue_size of
    them (MAX_QUEUE here); the next one is refused at once with UNAVAILABLE, and the running ones go on. The
    waiting ones start as soon as slots free up."""
    assert_idle(server)
    busy, late = Stream(server), Stream(server)
    try:
        for i in range(SLOTS):
            busy.send(f"busy{i}", input_ids=PROMPT, max_tokens=600, stream=True)
        seen, deadline = set(), time.monotonic() + 30
        while len(seen) < SLOTS:  # every slot generating
            assert time.monotonic() < deadline, seen
            seen.add(busy.next()[0])
        for i in range(MAX_QUEUE + 1):
            late.send(f"late{i}", input_ids=PROMPT, max_tokens=5, stream=False)
        rid, error, _, _ = late.next(timeout=10)
        assert rid is None and "max_queue_size" in error.message(), error
        deadline = time.monotonic() + 5
        while server.metric("gpt_waiting_requests", model=STREAM) != MAX_QUEUE:
            assert time.monotonic() < deadline, "the waiting requests are not counted in gpt_waiting_requests"
            time.sleep(0.05)
        assert not keep_done(busy)  # the running ones were never disturbed
        busy.client.stop_stream(cancel_requests=True)  # frees the slots
        done = [late.next(timeout=30) for _ in range(MAX_QUEUE)]
        assert all(rid and final and int(out["num_output_tokens"][0, 0]) == 5 for rid, out, final, _ in done), done
    finally:
        busy.close(cancel=True)
        late.close()
    assert_idle(server)


def test_openai_style_request_fields(server):
    fields = dict(text_input="Hello world", max_tokens=6, return_num_input_tokens=True,
                  return_num_output_tokens=True)
    full = stream_once(server, stream=False, exclude_input_in_output=False, **fields)
    assert len(full) == 1
    _, out, _, _ = full[0]
    assert out["text_output"][0, 0].decode() == "Hello world" + "d" * 6  # the tiny model's repetition
    assert int(out["num_input_tokens"][0, 0]) == 11 and int(out["num_output_tokens"][0, 0]) == 6
    streamed = stream_once(server, stream=True, exclude_input_in_output=True, **fields)
    assert text_of(streamed) == "d" * 6
    assert int(streamed[-1][1]["num_input_tokens"][0, 0]) == 11
    assert int(streamed[-1][1]["num_output_tokens"][0, 0]) == 6
    same = plain(server, text_input="Hello world", max_tokens=6, exclude_input_in_output=True)
    assert same["text_output"][0, 0].decode() == text_of(streamed)


def _post(server, path, body):
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{STREAM}/{path}",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_generate_endpoints_with_openai_style_fields(server):
    """Triton's HTTP generate / generate_stream (the JSON the OpenAI-compatible frontends send)."""
    body = {"text_input": "Hello world", "max_tokens": 4, "exclude_input_in_output": True,
            "return_num_input_tokens": True, "return_num_output_tokens": True}
    status, text = _post(server, "generate", {**body, "stream": False})
    assert status == 200
    reply = json.loads(text)
    assert (reply["text_output"], reply["num_input_tokens"], reply["num_output_tokens"]) == ("dddd", 11, 4)
    status, text = _post(server, "generate_stream", {**body, "stream": True})
    events = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and 2 <= len(events) <= 5
    assert "".join(e["text_output"] for e in events) == "dddd" and events[-1]["num_output_tokens"] == 4
    status, text = _post(server, "generate", {**body, "max_tokens": 0})
    assert status == 400 and "max_tokens=0" in text  # INVALID_ARG
    invalid = server.metric("gpt_invalid_requests_total", model=STREAM)
    (_, err, final, _), = stream_once(server, input_ids=PROMPT, max_tokens=0, stream=True)
    assert final and "max_tokens=0" in err.message()
    assert server.metric("gpt_invalid_requests_total", model=STREAM) == invalid + 1


def test_generate_endpoint_edges(server):
    from tests.integration.test_gpt_large import test_generate_endpoint_edges as edges

    edges(server, STREAM)


def test_metrics(server):
    assert_idle(server)
    counts = ("gpt_time_to_first_token_seconds_count", "gpt_time_per_output_token_seconds_count")
    before = {name: server.metric(name, model=STREAM) for name in counts}
    responses = stream_once(server, input_ids=PROMPT, max_tokens=4, stream=True)
    assert len(ids_of(responses)) == 4 and int(responses[-1][1]["num_output_tokens"][0, 0]) == 4
    # the model observes them just after sending the responses: poll briefly
    deadline = time.monotonic() + 5
    while any(server.metric(name, model=STREAM) < before[name] + 1 for name in counts) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    for name in counts:  # one observation for the one request
        assert server.metric(name, model=STREAM) == before[name] + 1, name

    text = server.metrics()
    for name in ("gpt_inflight_requests", "gpt_waiting_requests", "gpt_slots", "gpt_engine_alive",
                 "gpt_time_to_first_token_seconds_count", "gpt_time_per_output_token_seconds_count",
                 "gpt_unavailable_requests_total", "gpt_generated_tokens_total"):
        assert re.search(rf'^{name}{{[^}}]*model="{STREAM}"', text, re.M), name
    assert server.metric("gpt_engine_alive", model=STREAM) == 1
    assert server.metric("gpt_slots", model=STREAM) == SLOTS
