"""The persistent decode block (decode_block): its plan covers each linear, and its kernel, run phase by phase
under Triton's CPU interpreter (which runs programs one after another, so it cannot wait at a grid barrier; CI has
no triton: skipped), equals the ops it replaces on the same block, bf16, FP8 and int8 weights. The GPU tests run it
whole, barriers included; tests/unit/test_generation.py runs decode_linears=block through the engine on a CPU."""
import pytest
import torch
import torch.nn as nn

from gptserve.engine import decode_block as db
from gptserve.engine.config import ModelConfig
from gptserve.engine.fp8 import Fp8Converter
from gptserve.engine.model import Block
from tests.unit.triton_interpreter import needs_triton, run_interpreted

POSITION = 137  # mid-block of split-KV's 64, in a cache of 300


def case(weights: str, device: str = "cpu", n_embd: int = 64, heads: int = 4, cache_len: int = 300, seed: int = 0):
    """A block with LayerNorms and biases far from their defaults, bf16 caches of two slots (the row's is slot 0;
    slot 1 must stay untouched) and a row x [1, C] -> (block, x, k_cache, v_cache, positions)."""
    torch.manual_seed(seed)
    block = Block(ModelConfig(n_layer=1, n_embd=n_embd, n_head=heads, vocab_size=16, n_ctx=cache_len))
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("bias") or ".ln_" in f".{name}":
                p.uniform_(-0.5, 0.5) if name.endswith("bias") else p.uniform_(0.5, 1.5)
    block = block.to(device=device, dtype=torch.bfloat16)
    if weights != "bf16":
        Fp8Converter({"fp8": "weight-only", "int8": "int8-weight-only"}[weights]).block(block)
    k, v = (torch.randn(2, heads, cache_len, n_embd // heads, device=device).to(torch.bfloat16) for _ in range(2))
    x = (torch.randn(1, n_embd, device=device) * 3 + 1).to(torch.bfloat16)
    return block, x, k, v, torch.tensor([POSITION], device=device)


def check_against_the_ops(weights: str, device: str = "cpu", size: str = "small", **launch_options):
    """The kernel's output and caches against reference() (the ops it replaces): the output and the row's k and v
    to bf16 rounding (the kernel sums each output in other chunks), every other cache entry exactly as it was.
    run_interpreted calls this under the interpreter, phase by phase; tests/gpu calls it on CUDA, also at
    gpt2-large's size (size "large")."""
    shape = dict(n_embd=1280, heads=20, cache_len=1500) if size == "large" else {}
    block, x, k, v, positions = case(weights, device, **shape)
    norms, linears, eps = db.block_tensors(block)
    want_k, want_v = k.clone(), v.clone()
    with torch.no_grad():
        want = db.reference(x, norms, linears, eps, want_k, want_v, positions)
        got_k, got_v = k.clone(), v.clone()
        if device == "cpu":  # the interpreter: one launch a phase, three programs sharing every linear unevenly
            got = db.launch(x, norms, linears, eps, got_k, got_v, positions, programs=3, phase_launches=True,
                            config=(256, 4))  # chunks of 256 bytes: several tiles and K chunks a program
        else:
            got = db.launch(x, norms, linears, eps, got_k, got_v, positions, **launch_options)
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)
    for got_cache, want_cache, before in ((got_k, want_k, k), (got_v, want_v, v)):
        row = (0, slice(None), POSITION)
        torch.testing.assert_close(got_cache[row].float(), want_cache[row].float(), atol=2e-2, rtol=2e-2)
        got_cache[row], want_cache[row] = before[row], before[row]
        assert torch.equal(got_cache, before) and torch.equal(want_cache, before)


@needs_triton
@pytest.mark.parametrize("weights", ["bf16", "fp8", "int8"])
def test_kernel_phase_by_phase_equals_the_ops_it_replaces(weights):
    run_interpreted("tests.unit.test_decode_block", "check_against_the_ops", weights)


def test_plan_gives_each_program_its_share_in_one_tile_and_chunks_of_the_set_size():
    for n, k in [(3840, 1280), (1280, 1280), (5120, 1280), (1280, 5120)]:  # gpt2-large's linears on 132 SMs
        for element_size in (2, 1):  # bf16; FP8 and int8
            block_n, block_k = db.plan(n, k, 132, element_size)
            assert block_n >= -(-n // 132) and block_n & (block_n - 1) == 0 and block_k & (block_k - 1) == 0
            assert block_n * block_k * element_size == db.CHUNK_BYTES
    assert db.plan(64, 256, 3, 2, 256) == (32, 16)  # the interpreter test's mlp proj: 22 columns a program
    assert db.plan(100_000, 64, 4, 2)[0] == db.MAX_BLOCK_N  # a wide share takes several tiles


def test_block_tensors_are_the_blocks_own():
    block, *_ = case("bf16")
    norms, linears, eps = db.block_tensors(block)
    assert norms[0] is block.ln_1.weight and norms[3] is block.ln_2.bias and eps == block.ln_1.eps
    assert linears[0] is block.attn.qkv.weight and linears[1] is None and linears[11] is block.mlp.proj.bias
    assert all(isinstance(m, nn.Linear) for m in (block.attn.qkv, block.mlp.proj))
