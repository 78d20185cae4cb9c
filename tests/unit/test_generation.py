import os

import pytest
import torch

from gptserve.engine import Engine
from gptserve.serving import GenerationRequest, generate
from gptserve.settings import ServingConfig

PROMPT = (10, 20, 30, 40, 50, 60)


def greedy(prompt, n=10, **kw):
    return GenerationRequest(prompt_ids=tuple(prompt), max_tokens=n, end_id=-1, **kw)


def test_prompt_alone_equals_prompt_in_ragged_batch(tiny_engine):
    alone = generate(tiny_engine, [greedy(PROMPT)])[0].output_ids
    batch = [greedy(range(1, 40)), greedy(PROMPT), greedy((7,)), greedy(range(100, 300))]
    assert generate(tiny_engine, batch)[1].output_ids == alone
    assert len(alone) == 10


@pytest.mark.parametrize("slots", [12, 40])  # buckets 16 and 48: rows past the last slot
def test_a_batch_of_every_slot_between_buckets_equals_prompts_alone(tiny_engine, slots):
    engine = Engine(ServingConfig(preset="tiny", max_batch_size=slots), device="cpu")
    engine.warmup(prompt_len=4)
    batch = [greedy(range(1 + i, 20 + i), n=5) for i in range(slots)]
    assert [r.output_ids for r in generate(engine, batch)] == [generate(tiny_engine, [r])[0].output_ids for r in batch]


def test_same_seed_same_samples_in_any_batch(tiny_engine):
    def sampled(seed, **kw):
        return greedy(PROMPT, n=24, temperature=1.0, seed=seed, **kw)

    first = generate(tiny_engine, [sampled(42)])[0].output_ids
    again = generate(tiny_engine, [greedy((1, 2, 3)), sampled(42), sampled(7)])[1].output_ids
    other = generate(tiny_engine, [sampled(43)])[0].output_ids
    assert first == again
    assert first != other
    # 64-bit seeds work too
    big = sampled(2**64 - 5)
    assert generate(tiny_engine, [big])[0].output_ids == generate(tiny_engine, [big])[0].output_ids


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_engine):
    want = generate(tiny_engine, [greedy(PROMPT)])[0].output_ids
    k1 = greedy(PROMPT, temperature=1.5, top_k=1, seed=3)
    p0 = greedy(PROMPT, temperature=1.5, top_p=1e-6, seed=3)
    got = generate(tiny_engine, [k1, p0])
    assert got[0].output_ids == want
    assert got[1].output_ids == want


def test_stops_on_end_id(tiny_engine):
    free = generate(tiny_engine, [greedy(PROMPT, n=12)])[0]
    end = free.output_ids[3]
    first = free.output_ids.index(end)
    stopped = generate(tiny_engine, [GenerationRequest(prompt_ids=PROMPT, max_tokens=12, end_id=end)])[0]
    assert stopped.output_ids == free.output_ids[:first]
    assert stopped.finish_reason == "end_id"


def test_stops_at_max_tokens_per_request(tiny_engine):
    results = generate(tiny_engine, [greedy(PROMPT, n=3), greedy(PROMPT, n=17)])
    assert [len(r.output_ids) for r in results] == [3, 17]
    assert results[1].output_ids[:3] == results[0].output_ids
    assert results[0].finish_reason == "length"


def test_stop_words_cut_text(tiny_engine):
    free = generate(tiny_engine, [greedy(PROMPT, n=12)])[0]
    text = tiny_engine.tokenizer.decode(free.output_ids)
    word = text[4:6]
    assert word
    r = generate(tiny_engine, [greedy(PROMPT, n=12, stop_words=(word,), exclude_input_in_output=True)])[0]
    assert r.finish_reason == "stop_word"
    assert r.text == text[: text.find(word)]


def test_text_output_includes_prompt_unless_excluded(tiny_engine):
    req = dict(prompt_ids=tuple(b"Hi there"), max_tokens=4, end_id=-1, prompt_text="Hi there")
    with_prompt = generate(tiny_engine, [GenerationRequest(**req)])[0]
    without = generate(tiny_engine, [GenerationRequest(**req, exclude_input_in_output=True)])[0]
    assert with_prompt.text == "Hi there" + without.text


def test_sixteen_requests_in_one_batch(tiny_engine):
    results = generate(tiny_engine, [greedy(range(i + 1), n=5) for i in range(16)])
    assert [len(r.output_ids) for r in results] == [5] * 16
    assert [r.num_input_tokens for r in results] == list(range(1, 17))


def test_warmup_covers_every_bucket(tiny_engine):
    assert sorted(tiny_engine.warmup()) == [1, 2, 4, 8, 16]
    assert not tiny_engine.prefill_graphed  # eager on a CPU: prefill graphs need the GPU's CUDA-graph decode


def test_prefill_graph_lengths_double_up_to_the_chunk():
    from gptserve.engine.graphs import padded_lengths

    assert padded_lengths(512, 2048) == [64, 128, 256, 512]
    assert padded_lengths(300, 2048) == [64, 128, 256, 320]  # the chunk rounded up to 64
    assert padded_lengths(16, 2048) == [64]
    assert padded_lengths(4096, 1024) == [64, 128, 256, 512, 1024]  # never past the cache


OTHER_PATHS = [dict(attention_backend="flex"), dict(attention_backend="splitkv"), dict(decode_linears="fused"),
               dict(attention_backend="splitkv", decode_linears="fused"), dict(decode_linears="head")]


@pytest.mark.parametrize("path", OTHER_PATHS, ids=lambda p: "-".join(p.values()))
def test_other_decode_paths_match_sdpa(tiny_engine, path):
    other = Engine(ServingConfig(preset="tiny", **path), device="cpu")
    batch = [greedy(range(1, 40), n=6), greedy(PROMPT, n=6)]
    a = generate(tiny_engine, batch, record_logits=True)
    b = generate(other, batch, record_logits=True)
    for x, y in zip(a, b):
        assert x.output_ids == y.output_ids
        for lx, ly in zip(x.step_logits, y.step_logits):
            assert (lx - ly).abs().max().item() < 1e-4


@pytest.mark.parametrize("linears", ["by_batch", "one_row"])
def test_decode_linears_fuse_batch_one_and_at_most_the_head_above(tiny_engine, monkeypatch, linears):
    """What decode_linears=auto is on a GPU: every linear fused in batch-1 steps, and in steps of 2-16 rows the
    LM head alone (by_batch: a narrow bf16 model) or nothing (one_row: a wide one with FP8 weights); the tokens
    and logits of torch's linears either way. On a CPU auto is torch; either can be chosen by hand."""
    from gptserve.engine import model as model_module

    assert tiny_engine.resolved.decode_linears == "torch"  # auto, on a CPU
    engine = Engine(ServingConfig(preset="tiny", decode_linears=linears), device="cpu")  # chosen by hand
    assert engine.resolved.decode_linears == engine.model.decode_linears == linears
    fused_blocks, fused_calls = [], []
    run_block = engine._run_block
    engine._run_block = lambda block, x, pending, step: (fused_blocks.append((x.shape[0], x.shape[1], step.fused)),
                                                         run_block(block, x, pending, step))[1]
    fused_linear = model_module.fused_linear
    monkeypatch.setattr(model_module, "fused_linear", lambda x, *a, **k: (fused_calls.append(x.shape[0]),
                                                                          fused_linear(x, *a, **k))[1])
    for n in (1, 3):
        batch = [greedy(range(1, 40 + i), n=6) for i in range(n)]
        fused_blocks.clear(), fused_calls.clear()
        a = generate(tiny_engine, batch, record_logits=True)
        b = generate(engine, batch, record_logits=True)
        decode_rows = {rows for rows, tokens, _ in fused_blocks if tokens == 1}
        assert decode_rows == {1 if n == 1 else 4}  # batch 3 runs bucket 4
        assert all(fused == (rows == 1) for rows, tokens, fused in fused_blocks if tokens == 1)
        head_fused = n == 1 or linears == "by_batch"
        assert set(fused_calls) == (decode_rows if head_fused else set())  # the fused LM head of decode steps
        for x, y in zip(a, b):
            assert x.output_ids == y.output_ids
            for lx, ly in zip(x.step_logits, y.step_logits):
                assert (lx - ly).abs().max().item() < 1e-4


def test_decode_linears_auto_fuses_where_it_was_measured_to_win():
    from gptserve.engine.build import auto_decode_linears
    from gptserve.engine.config import PRESETS

    narrow, wide, bf16 = PRESETS["gpt2-large"], PRESETS["gpt-large-40b"], torch.bfloat16
    assert auto_decode_linears(narrow, bf16, "none", True, "block") == "by_batch"
    assert auto_decode_linears(wide, bf16, "weight-only", True, "block") == "one_row"
    assert auto_decode_linears(wide, bf16, "none", True, "block") == "torch"  # cuBLAS near the floor already
    assert auto_decode_linears(narrow, bf16, "weight-only", True, "block") == "one_row"  # 2-16 rows: two terms
    assert auto_decode_linears(narrow, bf16, "none", True, "step") == "torch"
    assert auto_decode_linears(narrow, torch.float16, "none", True, "block") == "torch"
    assert auto_decode_linears(wide, bf16, "weight-only", False, "block") == "torch"  # a CPU


def test_attention_backend_auto_takes_split_kv_where_it_was_measured_to_win():
    from gptserve.engine.build import auto_attention_backend, resolve
    from gptserve.engine.config import PRESETS

    bf16, fp8 = torch.bfloat16, torch.float8_e4m3fn
    assert auto_attention_backend(PRESETS["gpt2-large"], True, bf16) == "splitkv"
    assert auto_attention_backend(PRESETS["gpt-large-40b"], True, bf16) == "sdpa"  # not measured against SDPA there
    assert auto_attention_backend(PRESETS["gpt-large-40b"], True, fp8) == "splitkv"  # SDPA would widen the cache
    assert auto_attention_backend(PRESETS["gpt2-large"], False, bf16) == "sdpa"  # a CPU
    assert resolve(ServingConfig(preset="tiny"), "cpu").attention_backend == "sdpa"


def test_fp8_mode_resolves_to_none_on_cpu(caplog):
    with caplog.at_level("INFO", logger="gptserve"):
        engine = Engine(ServingConfig(preset="tiny", fp8_mode="auto"), device="cpu")
    assert engine.resolved.fp8_mode == "none"
    assert sum("fp8_mode=auto needs a CUDA GPU" in m for m in caplog.messages) == 1


def test_compiled_flex_on_cpu_fails_the_load_clearly():
    with pytest.raises(ValueError, match="attention_backend=flex with compile_mode=default needs a CUDA GPU"):
        Engine(ServingConfig(preset="tiny", attention_backend="flex", compile_mode="default"), device="cpu")


def test_the_reference_probe_fits_an_engine_of_one_slot():
    # a server configured with max_batch_size 1 runs this probe when it loads (it took four prompts until run 76)
    engine = Engine(ServingConfig(preset="tiny", max_batch_size=1), device="cpu")
    assert engine.probe_max_abs_diff() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("path", [{}, dict(compile_region="step"), *OTHER_PATHS[1:]],
                         ids=lambda p: "-".join(p.values()) or "sdpa")
def test_compiled_path_matches_reference(path):
    engine = Engine(ServingConfig(preset="tiny", compile_mode="default", **path), device="cpu")
    assert engine.probe_max_abs_diff() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("region, linears", [("block", "torch"), ("step", "torch"), ("block", "by_batch"),
                                             ("block", "one_row"), ("step", "one_row")])
def test_compiled_decode_does_not_recompile_across_batch_and_kv_length_buckets(region, linears, tmp_path,
                                                                               monkeypatch):
    from torch._dynamo.utils import counters

    # A compile cache of its own: graphs cached by other engines (16 cache rows) carry their own guards on B.
    # The engine sets the variables; monkeypatch puts the old values back afterwards.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_CACHE_DIR", "unset")  # recorded, so monkeypatch restores the value before it
    monkeypatch.delenv("TRITON_CACHE_DIR")
    torch._dynamo.reset()
    engine = Engine(ServingConfig(preset="tiny", compile_mode="default", max_batch_size=64, compile_region=region,
                                  compile_cache_dir=str(tmp_path), decode_linears=linears), device="cpu")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")  # the engine's own kernels: same volume
    before = counters["stats"]["unique_graphs"]
    engine.warmup()
    graphs = counters["stats"]["unique_graphs"]
    # batch 1, and one graph for every bucket 2..64 (no guard on B <= 16, where by_batch's fused head stops);
    # region block: one block's graphs serve every layer
    assert graphs - before == 2
    for rows in (1, 3, 16, 24, 64):
        for position in (5, 300, engine.context - 1):
            tokens = torch.zeros(rows, dtype=torch.int64)
            logits = engine.decode_step(tokens, torch.full((rows,), position), position)
            assert logits.shape == (rows, engine.cfg.vocab_size)
    assert counters["stats"]["unique_graphs"] == graphs


def test_decode_reads_only_the_cache_up_to_the_bucketed_position(tiny_engine):
    assert tiny_engine.kv_len_for(0) == 256 and tiny_engine.kv_len_for(255) == 256
    assert tiny_engine.kv_len_for(256) == 512 and tiny_engine.kv_len_for(tiny_engine.context - 1) == tiny_engine.context
    # the same logits whether attention reads 256 positions or the whole cache
    prompt = tuple(range(1, 40))
    tiny_engine.prefill([prompt], [0])
    token, position = torch.tensor([7]), torch.tensor([len(prompt)])
    bounded = tiny_engine.decode_step(token, position, len(prompt))
    tiny_engine.prefill([prompt], [0])
    whole = tiny_engine.decode_step(token, position)
    assert torch.allclose(bounded, whole, atol=1e-5)
