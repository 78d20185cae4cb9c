"""gpt_large (dynamic batching) on a real tritonserver (CPU, tiny preset unless a checkpoint is given).

One server for most of the module (only gpt_large loaded); further servers for the things that need their own
start-up: a Hugging Face checkpoint through MODEL_PATH, missing / corrupt checkpoints, and a copy of the model
with a small Triton queue to overflow it.
"""
from __future__ import annotations

import json
import math
import queue
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
import transformers
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.triton_server import REPO_ROOT, TritonServer, TritonServerError, make_inputs, sum_metric

pytestmark = pytest.mark.integration

MODEL = "gpt_large"
VOCAB, N_CTX = 512, 1024  # the tiny preset, which gpt_large uses on a CPU
MAX_TOKENS_LIMIT = N_CTX - 1  # min(max_tokens_limit=1024, context - 1)
OUTPUTS = ("output_ids", "text_output", "num_input_tokens", "num_output_tokens")
INVALID = "StatusCode.INVALID_ARGUMENT"
UNAVAILABLE = "StatusCode.UNAVAILABLE"
PROMPT = [10, 20, 30, 40, 50, 60]


def as_dict(result) -> dict:
    return {name: result.as_numpy(name) for name in OUTPUTS}


def ids(out) -> list[int]:
    return out["output_ids"].reshape(-1).tolist()


def decode_bytes(token_ids) -> str:
    """What the byte tokenizer (the tiny preset's) makes of ids: UTF-8 bytes, and U+FFFD for each id above 255
    (it stays visible) after the bytes before it."""
    text, run = "", bytearray()
    for i in token_ids:
        if 0 <= i < 256:
            run.append(i)
        else:
            text += run.decode("utf-8", errors="replace") + "\ufffd"
            run.clear()
    return text + run.decode("utf-8", errors="replace")


def grpc_infer(server, **fields) -> dict:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return as_dict(client.infer(MODEL, make_inputs(grpcclient, **fields), client_timeout=120))
    finally:
        client.close()


def grpc_error(server, **fields) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(server, **fields)
    return info.value


def concurrent(server, requests: list[dict], timeout: float = 120) -> list:
    """Send every request at once (gRPC async_infer on one channel); per request a dict of outputs or the
    InferenceServerException, in request order."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    done: "queue.Queue[tuple[int, object, object]]" = queue.Queue()
    try:
        for i, fields in enumerate(requests):
            client.async_infer(MODEL, make_inputs(grpcclient, **fields),
                               callback=lambda result, error, i=i: done.put((i, result, error)),
                               client_timeout=timeout)
        results: list = [None] * len(requests)
        for _ in requests:
            i, result, error = done.get(timeout=timeout)
            results[i] = error if error is not None else as_dict(result)
        return results
    finally:
        client.close()


def metric(server, name: str) -> float:
    return server.metric(name, model=MODEL)


def metric_values(server, *names: str) -> dict[str, float]:
    text = server.metrics()
    return {name: sum_metric(text, name, model=MODEL) for name in names}


def settled(server, *names: str, timeout: float = 10.0) -> dict[str, float]:
    """metric_values once Triton's own statistics have caught up: they are reported just after the responses
    are sent, so right after a reply nv_inference_exec_count & co. can still lack the last batch."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        values = metric_values(server, "nv_inference_request_success", "nv_inference_exec_count", *names)
        if values == previous or time.monotonic() > deadline:
            return values
        previous = values
        time.sleep(0.2)


@contextmanager
def blocking_request(server, max_tokens: int, timeout: float = 20.0) -> Iterator["Future[dict]"]:
    """Send one slow greedy request (PROMPT, ``max_tokens`` tokens) from a thread and wait until the model instance
    is executing it, so that whatever the block sends waits in Triton's queue; yields its Future, which is done
    (its outputs, or the error) when the block is left.

    model.py observes gpt_batch_size at the start of execute(): the request is executing once that histogram's
    count rose by one.
    """
    before = metric(server, "gpt_batch_size_count")
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(grpc_infer, server, input_ids=PROMPT, max_tokens=max_tokens, end_id=-1)
        deadline = time.monotonic() + timeout
        while True:
            ended = future.done()  # read before the count: had it executed, the count shows it
            count = metric(server, "gpt_batch_size_count")
            if count >= before + 1:
                break
            if ended:
                raise AssertionError(f"the slow request ended without executing: {future.exception()!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the slow request did not start executing within {timeout:g} s")
            time.sleep(0.01)
        assert count == before + 1, (before, count)  # it alone started an execute()
        yield future
    # leaving the pool joined the thread: the future is done


# -- the module's server ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    with TritonServer(REPO_ROOT / "model_repository", models=[MODEL], startup_timeout=240) as srv:
        yield srv


# -- 1. the two protocols ---------------------------------------------------------------------------------------
def test_text_input_over_http(server):
    client = server.http_client()
    prompt = "Hello wörld"  # 12 UTF-8 bytes = 12 tokens of the byte tokenizer
    n_prompt = len(prompt.encode())
    result = as_dict(client.infer(MODEL, make_inputs(httpclient, text_input=prompt, max_tokens=10, end_id=-1)))
    out = ids(result)
    assert result["output_ids"].shape == (1, 10)
    assert len(out) == 10 == int(result["num_output_tokens"][0, 0])
    assert int(result["num_input_tokens"][0, 0]) == n_prompt
    assert all(0 <= t < VOCAB for t in out)
    text = result["text_output"][0, 0].decode()
    assert text.startswith(prompt)
    assert text == prompt + decode_bytes(out)

    excluded = as_dict(client.infer(MODEL, make_inputs(httpclient, text_input=prompt, max_tokens=10, end_id=-1,
                                                       exclude_input_in_output=True)))
    assert ids(excluded) == out  # greedy: same tokens
    assert excluded["text_output"][0, 0].decode() == decode_bytes(out)
    assert int(excluded["num_input_tokens"][0, 0]) == n_prompt

    # no max_tokens: the configured max_tokens_default (16)
    default = as_dict(client.infer(MODEL, make_inputs(httpclient, text_input=prompt, end_id=-1)))
    assert int(default["num_output_tokens"][0, 0]) == 16 and ids(default)[:10] == out


def test_input_ids_over_grpc(server):
    client = server.grpc_client()
    prompt = [10, 20, 30, 40, 50, 60, 300, 7]
    result = as_dict(client.infer(MODEL, make_inputs(grpcclient, input_ids=prompt, max_tokens=24, end_id=-1)))
    out = ids(result)
    assert len(out) == 24 == int(result["num_output_tokens"][0, 0])
    assert int(result["num_input_tokens"][0, 0]) == len(prompt)
    assert all(0 <= t < VOCAB for t in out)
    assert result["text_output"][0, 0].decode() == decode_bytes(prompt) + decode_bytes(out)
    # the same request over HTTP gives the same greedy tokens
    http = server.http_client()
    again = as_dict(http.infer(MODEL, make_inputs(httpclient, input_ids=prompt, max_tokens=24, end_id=-1)))
    assert ids(again) == out


def test_end_id_stops_generation_and_is_not_returned(server):
    prompt = [10, 20, 30, 40, 50, 60]
    full = ids(grpc_infer(server, input_ids=prompt, max_tokens=12, end_id=-1))
    stop_at = full[-1]
    first = full.index(stop_at)  # generation ends at the first occurrence; the end id itself is not returned
    out = grpc_infer(server, input_ids=prompt, max_tokens=12, end_id=stop_at)
    assert ids(out) == full[:first] and first < 12
    assert out["text_output"][0, 0].decode() == decode_bytes(prompt) + decode_bytes(full[:first])
    assert int(out["num_output_tokens"][0, 0]) == first


# -- 2. dynamic batching ------------------------------------------------------------------------------------------
def _burst_prompts(n=16):
    return [dict(input_ids=[(7 * i + 3 * j) % 500 + 1 for j in range(2 + 5 * i)], max_tokens=6 + i, end_id=-1)
            for i in range(n)]


def test_burst_of_ragged_requests_is_batched_and_matches_one_at_a_time(server):
    requests = _burst_prompts(16)
    names = ("nv_inference_exec_count", "nv_inference_request_success", "gpt_batch_size_count",
             "gpt_batch_size_sum", "gpt_prompt_tokens_total", "gpt_generated_tokens_total",
             "gpt_request_latency_seconds_count")
    before = settled(server, *names)
    results = concurrent(server, requests)
    after = settled(server, *names)
    delta = {k: after[k] - before[k] for k in names}

    for fields, result in zip(requests, results):
        assert isinstance(result, dict), result
        assert len(ids(result)) == fields["max_tokens"] == int(result["num_output_tokens"][0, 0])
        assert int(result["num_input_tokens"][0, 0]) == len(fields["input_ids"])
    assert delta["nv_inference_request_success"] == 16
    assert 1 <= delta["nv_inference_exec_count"] < 16  # several requests per model execution
    assert delta["gpt_batch_size_count"] == delta["nv_inference_exec_count"]  # one observation per execute()
    assert delta["gpt_batch_size_sum"] == 16
    assert delta["gpt_prompt_tokens_total"] == sum(len(f["input_ids"]) for f in requests)
    assert delta["gpt_generated_tokens_total"] == sum(f["max_tokens"] for f in requests)
    assert delta["gpt_request_latency_seconds_count"] == 16

    alone = [grpc_infer(server, **fields) for fields in requests]
    assert settled(server)["nv_inference_exec_count"] - after["nv_inference_exec_count"] == 16  # one at a time
    for i, (batched, single) in enumerate(zip(results, alone)):
        assert ids(batched) == ids(single), f"request {i}"
        assert batched["text_output"][0, 0] == single["text_output"][0, 0]
    assert len({tuple(ids(r)) for r in alone}) > 1  # the prompts do lead to different generations


# -- 4. bad inputs ------------------------------------------------------------------------------------------------
BAD_REQUESTS = {
    "no prompt": (dict(max_tokens=4), ["exactly one of input_ids", "text_input"]),
    "both prompts": (dict(input_ids=PROMPT, text_input="hi", max_tokens=4), ["exactly one of input_ids"]),
    "empty input_ids": (dict(input_ids=[], max_tokens=4), ["input_ids is empty", "at least 1 token"]),
    "empty text_input": (dict(text_input="", max_tokens=4), ["text_input is empty", "at least 1 token"]),
    "token id too large": (dict(input_ids=[1, 2, VOCAB], max_tokens=4),
                           [f"input_ids holds {VOCAB}", f"outside the vocabulary [0, {VOCAB - 1}]"]),
    "negative token id": (dict(input_ids=[1, -3, 2], max_tokens=4),
                          ["input_ids holds -3", f"outside the vocabulary [0, {VOCAB - 1}]"]),
    "past the context": (dict(input_ids=[5] * 100, max_tokens=1000),
                         ["prompt of 100 tokens plus max_tokens=1000", f"exceeds the context of {N_CTX} tokens",
                          f"max_tokens must be at most {N_CTX - 100}"]),
    "max_tokens 0": (dict(input_ids=PROMPT, max_tokens=0),
                     ["max_tokens=0", f"outside the allowed range [1, {MAX_TOKENS_LIMIT}]"]),
    "max_tokens too large": (dict(input_ids=PROMPT, max_tokens=5000),
                             ["max_tokens=5000", f"outside the allowed range [1, {MAX_TOKENS_LIMIT}]"]),
    "negative temperature": (dict(input_ids=PROMPT, temperature=-0.5),
                             ["temperature=-0.5", "outside the allowed range [0, 100.0]"]),
    "NaN temperature": (dict(input_ids=PROMPT, temperature=float("nan")),
                        ["temperature=nan", "outside the allowed range [0, 100.0]"]),
    "top_p 0": (dict(input_ids=PROMPT, top_p=0.0), ["top_p=0.0", "outside the allowed range (0, 1]"]),
    "top_p above 1": (dict(input_ids=PROMPT, top_p=1.5), ["top_p=1.5", "outside the allowed range (0, 1]"]),
    "top_k negative": (dict(input_ids=PROMPT, top_k=-1), ["top_k=-1", f"outside the allowed range [0, {VOCAB}]"]),
    "top_k too large": (dict(input_ids=PROMPT, top_k=VOCAB + 1),
                        [f"top_k={VOCAB + 1}", f"outside the allowed range [0, {VOCAB}]"]),
    "end_id out of range": (dict(input_ids=PROMPT, end_id=VOCAB),
                            [f"end_id={VOCAB}", f"outside the allowed range [-1, {VOCAB - 1}]"]),
    "invalid UTF-8": (dict(text_input=b"ab\xff\xfecd", max_tokens=4), ["text_input is not valid UTF-8", "byte 2"]),
    "stream on gpt_large": (dict(input_ids=PROMPT, max_tokens=4, stream=True),
                            ["stream=true is not supported by this model", "gpt_large_stream"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_invalid_arg_naming_field_and_range(server, case):
    fields, expected = BAD_REQUESTS[case]
    invalid = metric(server, "gpt_invalid_requests_total")
    err = grpc_error(server, **fields)
    assert err.status() == INVALID, (err.status(), err.message())
    for part in expected:
        assert part in err.message(), (part, err.message())
    assert metric(server, "gpt_invalid_requests_total") == invalid + 1


def test_bad_input_over_http_is_400(server):
    client = server.http_client()
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, make_inputs(httpclient, text_input=b"\xc3\x28", max_tokens=4))
    assert info.value.status() == "400"  # INVALID_ARG, not 500 (INTERNAL)
    assert "text_input is not valid UTF-8 (byte 0)" in info.value.message()


def post_generate(server, model, body):
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/generate",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_generate_endpoint_edges(server, model=MODEL):
    """JSON keys that are not inputs, TensorRT-LLM-style fields and errors, through Triton's /generate
    (tests/integration/test_stream.py runs it on gpt_large_stream)."""
    ok = {"text_input": "Hi", "max_tokens": 4, "end_id": -1}
    status, body = post_generate(server, model, {**ok, "temprature": 0.5})  # misspelt: not silently ignored
    assert status == 400 and "unknown field(s) ['temprature']" in body["error"], body
    status, body = post_generate(server, model, {**ok, "min_length": 4, "frequency_penalty": 0.0,
                                                 "presence_penalty": 0.0, "repetition_penalty": 1.0})
    assert status == 200 and body["num_output_tokens"] == 4, body  # what genai-perf / OpenAI clients send
    status, body = post_generate(server, model, {**ok, "frequency_penalty": 0.5})
    assert status == 400 and "frequency_penalty=0.5 is not supported" in body["error"], body
    status, body = post_generate(server, model, {**ok, "max_tokens": 0})  # an error is an error status
    assert status == 400 and "max_tokens=0" in body["error"], body
    # answered by the generate gate (scripts/supervisor/gate.py): Triton 2.51 names neither
    status, body = post_generate(server, model, {**ok, "temperature": "hot"})
    assert status == 400 and "field 'temperature' must be a number (FP32)" in body["error"], body
    status, body = post_generate(server, model, {"prompt": "Hi"})
    assert status == 400 and "sets no input of model" in body["error"] and "'prompt'" in body["error"], body
    assert "'text_input'" in body["error"] and "'input_ids'" in body["error"]
    status, body = post_generate(server, model, {**ok, "stream": True})  # Triton: 200 with an error body
    assert status == 400 and "stream=true needs" in body["error"], body
    status, body = post_generate(server, model, {"prompt": "Hi", "max_tokens": 4})  # reaches the model
    assert status == 400 and "unknown field(s) ['prompt']" in body["error"] and "'text_input'" in body["error"]


def test_min_length_holds_the_end_id_back(server):
    free = ids(grpc_infer(server, input_ids=PROMPT, max_tokens=12, end_id=-1))
    end = free[2]
    stopped = ids(grpc_infer(server, input_ids=PROMPT, max_tokens=12, end_id=end))
    assert stopped == free[: free.index(end)]
    held = ids(grpc_infer(server, input_ids=PROMPT, max_tokens=12, end_id=end, min_length=8))
    assert len(held) >= 8 and end not in held[:8]


# -- 5. a bad request inside a good batch ----------------------------------------------------------------------
def test_bad_requests_inside_a_batch_fail_alone(server):
    good = [dict(input_ids=[(11 * i + j) % 256 for j in range(3 + 4 * i)], max_tokens=8 + i, end_id=-1)
            for i in range(6)]
    # Triton batches only requests with the same set of inputs: the bad ones send the same three fields
    bad = {2: dict(input_ids=[1, 2, 9999], max_tokens=8, end_id=-1),
           5: dict(input_ids=PROMPT, max_tokens=0, end_id=-1)}
    requests = list(good)
    for at, fields in sorted(bad.items()):
        requests.insert(at, fields)
    # 8 requests (max_batch_size 16): queued behind the blocker, Triton hands them over in one execute() when the
    # instance frees up (config.pbtxt has no preferred batch sizes and a 5 ms max_queue_delay)
    assert len(requests) == 8
    want = [grpc_infer(server, **fields) for fields in good]

    names = ("nv_inference_exec_count", "gpt_invalid_requests_total", "gpt_batch_size_count",
             "gpt_batch_size_sum", "gpt_generated_tokens_total")
    before = settled(server, *names)
    # A slow request occupies the model instance, so the 8 wait in Triton's queue and are batched together.
    with blocking_request(server, max_tokens=400) as blocker:
        results = concurrent(server, requests)
    assert len(ids(blocker.result())) == 400
    after = settled(server, *names)
    delta = {k: after[k] - before[k] for k in names}

    good_results = [r for i, r in enumerate(results) if i not in bad]
    for fields, result, expected in zip(good, good_results, want):
        assert isinstance(result, dict), result
        assert ids(result) == ids(expected)
        assert result["text_output"][0, 0] == expected["text_output"][0, 0]
        assert int(result["num_output_tokens"][0, 0]) == fields["max_tokens"]
    assert results[2].status() == INVALID and "input_ids holds 9999" in results[2].message()
    assert results[5].status() == INVALID and "max_tokens=0" in results[5].message()
    assert delta["gpt_invalid_requests_total"] == 2
    # The blocker, then the 8 in one execute() (Triton may stage the first arrival(s) as a batch of their own).
    assert 2 <= delta["nv_inference_exec_count"] <= 3
    # Every execute() generated for at least one good request: the bad ones were never executed on their own
    # but failed inside a batch with good ones, which were generated (6 + the blocker) without them.
    assert delta["gpt_batch_size_count"] == delta["nv_inference_exec_count"]
    assert delta["gpt_batch_size_sum"] == 1 + 6
    assert delta["gpt_generated_tokens_total"] == 400 + sum(f["max_tokens"] for f in good)


# -- 8. custom metrics --------------------------------------------------------------------------------------------
LABELS = f'gpu="cpu",model="{MODEL}",model_instance="{MODEL}_0"'  # which instance (and GPU) every series is


def test_custom_metrics_exist_and_move(server):
    text = server.metrics()
    for name in ("gpt_prompt_tokens_total", "gpt_generated_tokens_total", "gpt_invalid_requests_total",
                 "gpt_batch_size_count", "gpt_batch_size_sum", "gpt_request_latency_seconds_count",
                 "gpt_request_latency_seconds_sum", "gpt_max_abs_diff"):
        assert f'{name}{{{LABELS}}}' in text, name
    assert f'gpt_batch_size_bucket{{{LABELS},le="16"}}' in text
    assert f'gpt_request_latency_seconds_bucket{{{LABELS},le="+Inf"}}' in text
    diff = metric(server, "gpt_max_abs_diff")
    assert math.isfinite(diff) and 0.0 <= diff < 1e-3  # fp32 on a CPU: the optimized path is the reference

    names = ("gpt_prompt_tokens_total", "gpt_generated_tokens_total", "gpt_invalid_requests_total",
             "gpt_batch_size_count", "gpt_batch_size_sum", "gpt_request_latency_seconds_count",
             "gpt_request_latency_seconds_sum")
    before = settled(server, *names)
    grpc_infer(server, input_ids=list(range(1, 21)), max_tokens=7, end_id=-1)
    grpc_infer(server, text_input="abc", max_tokens=5, end_id=-1)
    grpc_error(server, input_ids=PROMPT, max_tokens=0)
    after = settled(server, *names)
    delta = {k: after[k] - before[k] for k in names}
    assert delta["gpt_prompt_tokens_total"] == 20 + 3
    assert delta["gpt_generated_tokens_total"] == 7 + 5
    assert delta["gpt_invalid_requests_total"] == 1
    assert delta["gpt_batch_size_count"] == 2 and delta["gpt_batch_size_sum"] == 2
    assert delta["gpt_request_latency_seconds_count"] == 2
    assert delta["gpt_request_latency_seconds_sum"] > 0
    assert metric(server, "gpt_max_abs_diff") == diff  # a start-up gauge


# -- 7. still healthy after all of the above ------------------------------------------------------------------
def test_model_and_server_still_ready(server):
    http = server.http_client()
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready(MODEL)
    grpc = server.grpc_client()
    assert grpc.is_server_ready() and grpc.is_model_ready(MODEL)
    out = grpc_infer(server, input_ids=PROMPT, max_tokens=3, end_id=-1)
    assert int(out["num_output_tokens"][0, 0]) == 3
    assert server.is_alive()


# -- 3. checkpoints through MODEL_PATH ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    torch.manual_seed(4321)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=256,
                                     bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("hf_gpt2") / "checkpoint"
    model.save_pretrained(path)
    return path, model


def test_hf_checkpoint_through_model_path_matches_transformers(hf_checkpoint):
    path, hf = hf_checkpoint
    prompts = [[5, 17, 200, 3], list(range(30, 71)), [300, 2, 9, 9, 9, 11, 400]]
    new = 20
    with TritonServer(REPO_ROOT / "model_repository", models=[MODEL], env={"MODEL_PATH": str(path)},
                      startup_timeout=240) as srv:
        batched = concurrent(srv, [dict(input_ids=p, max_tokens=new, end_id=-1) for p in prompts])
        alone = [grpc_infer(srv, input_ids=p, max_tokens=new, end_id=-1) for p in prompts]
        # the checkpoint's own architecture: n_positions=256 is the context
        err = grpc_error(srv, input_ids=[5] * 200, max_tokens=100)
        diff = srv.metric("gpt_max_abs_diff", model=MODEL)
    assert err.status() == INVALID and "exceeds the context of 256 tokens" in err.message()
    assert 0.0 <= diff < 1e-4
    for prompt, b, a in zip(prompts, batched, alone):
        with torch.no_grad():
            want = hf.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0,
                               eos_token_id=None)[0, len(prompt):].tolist()
        assert ids(a) == want
        assert ids(b) == want


@pytest.mark.parametrize("broken", ["missing file", "corrupt safetensors"])
def test_broken_checkpoint_fails_the_load_naming_the_file(tmp_path, hf_checkpoint, broken):
    if broken == "missing file":
        target = tmp_path / "no_such_checkpoint.safetensors"
        model_path, named, reason = target, target, "checkpoint not found"
    else:
        model_path = tmp_path / "corrupt"
        shutil.copytree(hf_checkpoint[0], model_path)
        target = model_path / "model.safetensors"
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 3])  # truncated mid-tensor
        named, reason = target, "cannot read checkpoint"
    server = TritonServer(REPO_ROOT / "model_repository", models=[MODEL], env={"MODEL_PATH": str(model_path)},
                          startup_timeout=240)
    try:
        with pytest.raises(TritonServerError):
            server.start()
        log = server.log_text()
    finally:
        server.stop()
    assert f"failed to load '{MODEL}'" in log
    lines = [line for line in log.splitlines() if str(named) in line and reason in line]
    assert lines, log[-5000:]


# -- 6. Triton's queue bound --------------------------------------------------------------------------------------
QUEUE = 2


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("small_queue_repo")
    shutil.copytree(REPO_ROOT / "model_repository" / MODEL, repo / MODEL)
    cfg = repo / MODEL / "config.pbtxt"
    text = cfg.read_text()
    assert "max_queue_size: 64" in text
    cfg.write_text(text.replace("max_queue_size: 64", f"max_queue_size: {QUEUE}"))
    with TritonServer(repo, models=[MODEL], startup_timeout=240) as srv:
        yield srv


def test_queue_overflow_is_unavailable(small_queue_server):
    server = small_queue_server
    flood = 12
    # a slow request holds the single model instance; everything sent meanwhile waits in Triton's queue
    with blocking_request(server, max_tokens=300) as blocker:
        results = concurrent(server, [dict(input_ids=PROMPT[: 1 + i % 6], max_tokens=40, end_id=-1)
                                      for i in range(flood)])
    assert int(blocker.result()["num_output_tokens"][0, 0]) == 300
    ok = [r for r in results if isinstance(r, dict)]
    rejected = [r for r in results if not isinstance(r, dict)]
    assert rejected, "no request was refused"
    assert len(ok) >= QUEUE  # the queue's worth was admitted ...
    for err in rejected:  # ... and the rest refused by Triton before reaching the model
        assert err.status() == UNAVAILABLE, (err.status(), err.message())
        assert "Exceeds maximum queue size" in err.message()
    for r in ok:
        assert int(r["num_output_tokens"][0, 0]) == 40 == len(ids(r))
    http = server.http_client()
    assert http.is_model_ready(MODEL) and http.is_server_ready()
    # with the queue drained, a request goes through again
    assert int(grpc_infer(server, input_ids=PROMPT, max_tokens=5, end_id=-1)["num_output_tokens"][0, 0]) == 5
