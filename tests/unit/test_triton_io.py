"""gptserve.triton.tensors' response building, against a stand-in for Triton's pb_utils that records what the model built.

(The integration tests see responses only after Triton has pruned unrequested outputs; this shows what the
model itself put in them.)"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gptserve.settings import ServingConfig
from gptserve.triton.runtime import Instance
from gptserve.triton.tensors import output_arrays, response


def recording_pb_utils():
    """pb_utils.Tensor(name, array) and Tensor.from_dlpack(name, capsule) record (route, name, values)."""

    def tensor(name, arr):
        return ("numpy", name, arr.tolist())

    tensor.from_dlpack = lambda name, capsule: ("dlpack", name, torch.utils.dlpack.from_dlpack(capsule).tolist())
    return SimpleNamespace(Tensor=tensor, InferenceResponse=lambda output_tensors: output_tensors)


def test_response_builds_only_the_requested_outputs():
    pb = recording_pb_utils()
    arrays = output_arrays([5, 6], "ab", 3)
    built = response(pb, arrays, frozenset({"output_ids", "num_output_tokens"}))
    assert [t[1] for t in built] == ["output_ids", "num_output_tokens"]
    assert built[0] == ("dlpack", "output_ids", [[5, 6]])  # numeric outputs travel through DLPack
    assert built[1] == ("dlpack", "num_output_tokens", [[2]])


def test_response_builds_every_output_when_none_is_requested():
    pb = recording_pb_utils()
    built = response(pb, output_arrays([7], "é", 1))
    assert [t[1] for t in built] == ["output_ids", "text_output", "num_input_tokens", "num_output_tokens"]
    assert built[1] == ("numpy", "text_output", [["é".encode()]])  # BYTES can only come from numpy
    assert np.array(built[2][2]).item() == 1


@pytest.mark.parametrize("groups, expected", [
    (None, 1),  # no instance_group in the config Triton hands over: one instance
    ([{"kind": "KIND_CPU", "count": 1}], 1),
    ([{"kind": "KIND_CPU", "count": 2}], 2),
    ([{"kind": "KIND_GPU", "count": 1, "gpus": [0]}], 1),
    ([{"kind": "KIND_GPU", "count": 1, "gpus": [0, 1]}], 2),  # Triton's default on two GPUs
    ([{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1, 2]}, {"kind": "KIND_CPU", "count": 1}], 7),
])
def test_instance_count_follows_the_instance_groups(groups, expected):
    """gpt_large_stream's execute() waits for room only when the model has more than one instance."""
    config = {} if groups is None else {"instance_group": groups}
    instance = Instance("m", "m_0", config, ServingConfig(), "cpu", "cpu")
    assert instance.instance_count == expected
