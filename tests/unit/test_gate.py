"""The generate gate's check (scripts/supervisor/gate.py): the bodies Triton 2.51 would refuse without naming
the field get a reason that names it; everything else goes on. The gate on a real server: test_gpt_large.py."""
import importlib.util

from tests.integration.triton_server import REPO_ROOT

spec = importlib.util.spec_from_file_location("gate", REPO_ROOT / "scripts" / "supervisor" / "gate.py")
gate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gate)

INPUTS = {"text_input": "BYTES", "input_ids": "INT32", "temperature": "FP32", "stream": "BOOL"}


def test_wrong_json_types_name_the_field():
    assert gate.problem("m", INPUTS, {"text_input": "hi", "temperature": "hot"}) == \
        "field 'temperature' must be a number (FP32) or a list of them, got a string"
    assert "field 'stream' must be true or false (BOOL)" in gate.problem("m", INPUTS, {"text_input": "a", "stream": 1})
    assert "field 'text_input' must be a string (BYTES)" in gate.problem("m", INPUTS, {"text_input": 5})
    assert "got true/false" in gate.problem("m", INPUTS, {"input_ids": [1, True]})  # JSON true is no number


def test_a_body_without_any_input_names_the_inputs():
    reason = gate.problem("m", INPUTS, {"prompt": "hi"})
    assert reason == ("the request sets no input of model 'm' (its fields: ['prompt']); "
                      "the inputs are ['input_ids', 'stream', 'temperature', 'text_input']")


def test_stream_true_belongs_to_generate_stream():
    body = {"text_input": "hi", "stream": True}
    assert gate.problem("m", INPUTS, body) == "stream=true needs /v2/models/m/generate_stream; /generate returns " \
                                              "one response"
    assert gate.problem("m", INPUTS, body, streaming=True) is None


def test_good_bodies_and_what_triton_names_itself_go_on():
    assert gate.problem("m", INPUTS, {"text_input": "hi", "temperature": 0.5, "stream": True}, streaming=True) is None
    assert gate.problem("m", INPUTS, {"input_ids": [1, 2, 3], "unknown": 1}) is None  # the model names it
    assert gate.problem("m", INPUTS, ["not", "an", "object"]) is None
