"""Checkpoint loading (CPU, no Triton).

Checkpoints are judged against Hugging Face transformers' GPT2LMHeadModel holding the same weights: the weights
are drawn larger than GPT-2's initialisation so greedy decoding does not just repeat one token.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from gptserve.engine import PRESETS, Engine, ModelConfig
from gptserve.engine.checkpoint import CheckpointError, to_hf_names
from gptserve.engine.model import GPT
from gptserve.serving import GenerationRequest, Limits, generate
from gptserve.settings import ServingConfig

TINY = PRESETS["tiny"]
PROMPTS = [(5, 17, 200, 3), tuple(range(30, 71)), (300, 2, 9, 9, 9, 11, 400)]
NEW_TOKENS = 12


# -- checkpoints ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    """Random weights for the tiny preset, in this package's names."""
    with torch.device("meta"):
        model = GPT(TINY)
    gen = torch.Generator().manual_seed(2024)
    state = {}
    for name, meta in model.state_dict().items():
        if name == "lm_head.weight":  # tied to wte
            continue
        noise = torch.randn(meta.shape, generator=gen)
        if ".ln_" in name or name.startswith("ln_"):
            state[name] = (1.0 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise
        else:
            state[name] = (0.3 if name.endswith("weight") else 0.05) * noise
    return state


def hf_model(state: dict[str, torch.Tensor], n_positions: int):
    """GPT2LMHeadModel (tiny architecture) holding `state` (positions cut to n_positions)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=TINY.n_layer, n_embd=TINY.n_embd, n_head=TINY.n_head, vocab_size=TINY.vocab_size,
                        n_positions=n_positions, layer_norm_epsilon=TINY.layer_norm_eps, bos_token_id=None,
                        eos_token_id=None)
    model = GPT2LMHeadModel(config).eval()
    weights = to_hf_names({**state, "wpe.weight": state["wpe.weight"][:n_positions]})
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing), missing
    return model


@pytest.fixture(scope="module")
def hf_reference(tiny_state):
    """Greedy continuations of PROMPTS by transformers with the tiny_state weights."""
    model = hf_model(tiny_state, TINY.n_ctx)
    out = []
    with torch.no_grad():
        for prompt in PROMPTS:
            seq = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
            out.append(seq[0, len(prompt):].tolist())
    assert len({tuple(o) for o in out}) == len(out) and any(len(set(o)) > 2 for o in out)  # not degenerate
    return out


def engine_for(model_path, **kw) -> Engine:
    kw.setdefault("max_batch_size", 4)
    return Engine(ServingConfig(model_path=str(model_path), **kw), device="cpu")


def greedy_tokens(engine) -> list[list[int]]:
    requests = [GenerationRequest(prompt_ids=p, max_tokens=NEW_TOKENS, end_id=-1) for p in PROMPTS]
    return [r.output_ids for r in generate(engine, requests)]


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def hf_names(state, prefix=True):
    named = to_hf_names(state)
    named.pop("lm_head.weight")
    return named if prefix else {k.removeprefix("transformer."): v for k, v in named.items()}


@pytest.mark.parametrize("fmt", ["ours.pt", "ours.safetensors", "hf.bin", "hf_no_prefix.safetensors"])
def test_state_dict_file_for_a_preset(tmp_path, tiny_state, hf_reference, fmt):
    names, suffix = fmt.split(".")
    state = {"ours": tiny_state, "hf": hf_names(tiny_state), "hf_no_prefix": hf_names(tiny_state, False)}[names]
    file = save(state, tmp_path / f"weights.{suffix}")
    engine = engine_for(file, preset="tiny", weights_seed=7)  # the seed must not matter: weights come from the file
    assert engine.cfg == TINY
    loaded = engine.model.state_dict()
    for name, tensor in tiny_state.items():
        assert torch.equal(loaded[name], tensor), name
    assert greedy_tokens(engine) == hf_reference
    assert engine.probe_max_abs_diff() < 1e-4


def test_seeded_weights_differ_from_the_checkpoint(tiny_state):
    """The checks above are not vacuous: without a checkpoint the preset's seeded weights are something else."""
    engine = Engine(ServingConfig(preset="tiny", weights_seed=7, max_batch_size=1), device="cpu")
    assert not torch.equal(engine.model.state_dict()["blocks.0.attn.qkv.weight"],
                           tiny_state["blocks.0.attn.qkv.weight"])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_state):
    """A Hugging Face checkpoint directory (config.json + model.safetensors), 256 positions."""
    path = tmp_path_factory.mktemp("hf_dir") / "gpt2-tiny"
    hf_model(tiny_state, 256).save_pretrained(path)
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    return path


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hf_directory_brings_its_architecture(tmp_path, hf_dir, tiny_state, hf_reference, weights):
    path = hf_dir
    if weights == "pytorch_model.bin":  # what older transformers wrote (transformers 5 writes safetensors only)
        path = tmp_path / "bin"
        path.mkdir()
        shutil.copy(hf_dir / "config.json", path / "config.json")
        torch.save(hf_model(tiny_state, 256).state_dict(), path / "pytorch_model.bin")
    engine = engine_for(path)  # preset "auto" (tiny on a CPU), but the architecture is config.json's
    assert engine.cfg == ModelConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_ctx=256)
    limits = Limits.of(engine)
    assert limits.n_ctx == 256 and limits.max_tokens_limit == 255
    assert torch.equal(engine.model.state_dict()["wpe.weight"], tiny_state["wpe.weight"][:256])
    assert greedy_tokens(engine) == hf_reference  # prompts + 12 tokens stay inside 256 positions


BROKEN_STATE = {
    "wrong shape": (lambda s: s.__setitem__("blocks.1.mlp.fc.weight", torch.zeros(64, 64)),
                    "tensor 'blocks.1.mlp.fc.weight' has shape (64, 64), model expects (256, 64)"),
    "wrong vocabulary": (lambda s: s.__setitem__("wte.weight", torch.zeros(500, 64)),
                         "tensor 'wte.weight' has shape (500, 64), model expects (512, 64)"),
    "missing tensor": (lambda s: s.pop("ln_f.bias"), "missing tensor 'ln_f.bias' (1 missing)"),
    "missing layer": (lambda s: [s.pop(k) for k in list(s) if k.startswith("blocks.1.")],
                      "missing tensor 'blocks.1.attn.proj.bias' (12 missing)"),
    "unexpected tensor": (lambda s: s.__setitem__("blocks.2.ln_1.weight", torch.ones(64)),
                          "unexpected tensor 'blocks.2.ln_1.weight'"),
    "NaN": (lambda s: s["blocks.0.attn.proj.weight"].__setitem__((3, 4), float("nan")),
            "tensor 'blocks.0.attn.proj.weight' is not finite floating point"),
    "integer tensor": (lambda s: s.__setitem__("ln_f.weight", torch.ones(64, dtype=torch.int64)),
                       "tensor 'ln_f.weight' is not finite floating point"),
}


@pytest.mark.parametrize("fmt", ["ours.pt", "ours.safetensors", "hf.pt", "hf.safetensors"])
@pytest.mark.parametrize("case", list(BROKEN_STATE))
def test_broken_state_dict_names_file_and_tensor(tmp_path, tiny_state, case, fmt):
    change, expected = BROKEN_STATE[case]
    names, suffix = fmt.split(".")
    state = {k: v.clone() for k, v in tiny_state.items()}
    change(state)
    if names == "hf":
        state = hf_names(state)  # the message still names the tensor as this package calls it
    file = save(state, tmp_path / f"broken.{suffix}")
    with pytest.raises(CheckpointError) as info:
        engine_for(file, preset="tiny")
    assert isinstance(info.value, ValueError)
    assert str(info.value) == f"{file}: {expected}"


def test_hf_names_with_a_foreign_tensor_are_rejected(tmp_path, tiny_state):
    state = hf_names(tiny_state)
    state["transformer.h.0.attn.rotary.inv_freq"] = torch.ones(8)
    file = save(state, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(f"{file}: unexpected tensor "
                                                        "'transformer.h.0.attn.rotary.inv_freq'")):
        engine_for(file, preset="tiny")


def test_hf_shape_mismatch_names_file_and_tensor(tmp_path, hf_dir):
    path = tmp_path / "mismatch"
    shutil.copytree(hf_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["n_embd"], config["n_head"] = 128, 4  # the weights are 64 wide
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        engine_for(path)
    message = str(info.value)
    assert message.startswith(f"{path / 'model.safetensors'}: tensor '")
    assert "model expects" in message and "128" in message


def test_missing_checkpoint(tmp_path):
    file = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(f"{file}: checkpoint not found")):
        engine_for(file, preset="tiny")


def test_directory_without_weights(tmp_path, hf_dir):
    path = tmp_path / "config_only"
    path.mkdir()
    shutil.copy(hf_dir / "config.json", path / "config.json")
    with pytest.raises(CheckpointError,
                       match=re.escape(f"{path}: no model.safetensors or pytorch_model.bin in the checkpoint")):
        engine_for(path)


@pytest.mark.parametrize("kind", ["garbage.pt", "truncated.safetensors", "truncated.pt", "hf_dir"])
def test_corrupt_checkpoint_names_the_file(tmp_path, tiny_state, hf_dir, kind):
    if kind == "garbage.pt":
        file = tmp_path / kind
        file.write_bytes(b"this is not a checkpoint\x00\xff" * 50)
        model_path = file
    elif kind == "hf_dir":
        model_path = tmp_path / "corrupt_dir"
        shutil.copytree(hf_dir, model_path)
        file = model_path / "model.safetensors"
        file.write_bytes(file.read_bytes()[:5000])
    else:
        file = save(tiny_state, tmp_path / kind)
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
        model_path = file
    with pytest.raises(CheckpointError) as info:
        engine_for(model_path, preset="tiny")
    assert str(info.value).startswith(f"{file}: cannot read checkpoint: ")


def test_pickle_that_is_not_a_state_dict(tmp_path, tiny_state):
    file = tmp_path / "list.pt"
    torch.save([tiny_state["ln_f.bias"]], file)
    with pytest.raises(CheckpointError, match=re.escape(f"{file}: not a state_dict of tensors")):
        engine_for(file, preset="tiny")
    file = tmp_path / "mixed.pt"
    torch.save({**tiny_state, "step": 100}, file)
    with pytest.raises(CheckpointError, match=re.escape(f"{file}: not a state_dict of tensors")):
        engine_for(file, preset="tiny")


@pytest.mark.parametrize("config_text,expected", [
    ("{not json", "cannot read a GPT-2 config.json"),
    (json.dumps({"model_type": "llama", "n_layer": 2}), "model_type 'llama' is not gpt2"),
    (json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 4, "vocab_size": 512, "n_positions": 256}),
     "missing GPT-2 field 'n_embd'"),
])
def test_bad_hf_config_names_the_config(tmp_path, hf_dir, config_text, expected):
    path = tmp_path / "bad_config"
    shutil.copytree(hf_dir, path)
    (path / "config.json").write_text(config_text)
    with pytest.raises(ValueError) as info:
        engine_for(path)
    assert str(info.value).startswith(f"{path / 'config.json'}: ")
    assert expected in str(info.value)


# -- the checkpoint's end token ------------------------------------------------------------------------------------
@pytest.mark.parametrize("files,expected", [
    ({}, -1),  # hf_dir's config.json says eos_token_id: null -> no end token
    ({"generation_config.json": {"eos_token_id": 7}}, 7),  # generation_config.json first
    ({"config.json": {"eos_token_id": 9}}, 9),
    ({"config.json": {"eos_token_id": 9}, "generation_config.json": {"eos_token_id": None}}, -1),
    ({"generation_config.json": {"eos_token_id": [5, 6]}}, 5),  # several: the first is the request default
    ({"config.json": {"eos_token_id": 50256}}, -1),  # outside the 512-token vocabulary: can never be sampled
])
def test_default_end_id_is_the_checkpoints(tmp_path, hf_dir, files, expected):
    path = tmp_path / "ckpt"
    shutil.copytree(hf_dir, path)
    (path / "generation_config.json").unlink(missing_ok=True)
    for name, fields in files.items():
        current = json.loads((path / name).read_text()) if (path / name).exists() else {}
        (path / name).write_text(json.dumps({**current, **fields}))
    engine = engine_for(path)
    assert engine.end_id == expected
    assert Limits.of(engine).end_id == expected  # what requests get when they name no end_id


def test_presets_keep_gpt2s_end_id():
    engine = Engine(ServingConfig(preset="tiny", max_batch_size=1), device="cpu")
    assert engine.end_id == TINY.vocab_size - 1
