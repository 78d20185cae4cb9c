"""What the tools send and how they read what comes back, in the models' TensorRT-LLM-style interface.

Token counting never assumes one token per response: a streamed response may carry several ids in output_ids
(coalesced delivery), and the final one may carry the last ids as well as num_output_tokens. A request's
output is the sum of len(output_ids) over all its responses; num_output_tokens, when present, is the server's
own count.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

DEFAULT_MODEL = "gpt_large"
# Token ids the prompts are drawn from. Byte-level ids 0..255 are valid for every model this repository serves
# (the tiny preset's vocabulary of 512 and GPT-2's 50257), so random prompts never trip the vocabulary check.
DEFAULT_VOCAB = 256

_TRITON_DTYPES = {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": np.bool_, "BYTES": np.object_}


def infer_input(module, name: str, value, triton_type: str):
    """One InferInput with a leading batch dimension of 1 (module: tritonclient.grpc or tritonclient.http).

    Scalars become [1, 1] tensors, sequences [1, n]."""
    arr = np.asarray(value, dtype=_TRITON_DTYPES[triton_type])
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = arr.reshape(1, -1)
    tensor = module.InferInput(name, list(arr.shape), triton_type)
    tensor.set_data_from_numpy(arr)
    return tensor


def build_inputs(module, prompt_ids: Sequence[int], max_tokens: int, *, ignore_eos: bool = True,
                 temperature: Optional[float] = None, seed: Optional[int] = None,
                 stream: Optional[bool] = None) -> list:
    """Inputs of one generation request (batch 1).

    ignore_eos sends end_id=-1 so exactly max_tokens tokens are generated (as `--ignore-eos` in vLLM's
    benchmark); stream=None leaves the `stream` input out (the non-decoupled model rejects stream=true)."""
    inputs = [
        infer_input(module, "input_ids", np.asarray(prompt_ids, dtype=np.int32), "INT32"),
        infer_input(module, "max_tokens", max_tokens, "INT32"),
        infer_input(module, "exclude_input_in_output", True, "BOOL"),
    ]
    if ignore_eos:
        inputs.append(infer_input(module, "end_id", -1, "INT32"))
    if temperature is not None:
        inputs.append(infer_input(module, "temperature", float(temperature), "FP32"))
    if seed is not None:
        inputs.append(infer_input(module, "seed", int(seed), "UINT64"))
    if stream is not None:
        inputs.append(infer_input(module, "stream", bool(stream), "BOOL"))
    return inputs


def requested_outputs(module, names: Sequence[str] = ("output_ids", "num_output_tokens")) -> list:
    """Only what the tools read: token ids and the token count (the text is not transferred)."""
    return [module.InferRequestedOutput(n) for n in names]


def response_ids(result) -> list[int]:
    """The token ids one response carries (any number, any shape; none when output_ids is absent)."""
    ids = result.as_numpy("output_ids")
    return [] if ids is None else np.asarray(ids).reshape(-1).tolist()


def reported_tokens(result) -> Optional[int]:
    """num_output_tokens when the response carries it (the final one of a stream, every unary response)."""
    n = result.as_numpy("num_output_tokens")
    return int(np.asarray(n).reshape(-1)[0]) if n is not None and np.asarray(n).size else None


def is_final_response(result) -> bool:
    """Whether a streamed response is flagged final (tritonclient gRPC: the triton_final_response parameter)."""
    try:
        params = result.get_response().parameters
        return "triton_final_response" in params and bool(params["triton_final_response"].bool_param)
    except Exception:
        return False


def random_prompts(rng: np.random.Generator, n: int, len_min: int, len_max: int,
                   vocab: int = DEFAULT_VOCAB) -> list[np.ndarray]:
    """n prompts of random token ids in [0, vocab), lengths uniform in [len_min, len_max]."""
    lengths = rng.integers(len_min, len_max + 1, size=n)
    return [rng.integers(0, vocab, size=int(k), dtype=np.int32) for k in lengths]
