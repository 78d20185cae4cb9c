"""gptserve.settings: config.pbtxt parameters -> typed, range-checked settings, declared once (CPU, no Triton)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gptserve.settings import ServingConfig, settings_table

REPO_ROOT = Path(__file__).resolve().parents[2]
DECLARED = {f.name: f for f in dataclasses.fields(ServingConfig)}
INTEGERS = [name for name, f in DECLARED.items() if f.metadata["limits"] and f.metadata["parameter"]]
CHOICES = [name for name, f in DECLARED.items() if f.metadata["choices"]]


def build(params, env=None, **fixed):
    return ServingConfig.from_parameters(params, env={} if env is None else env, **fixed)


def test_defaults_and_typed_values():
    assert build({}) == ServingConfig()
    config = build({"max_tokens_default": " 32 ", "weights_seed": "0", "preset": "tiny", "dtype": "bfloat16",
                    "model_path": "/ckpt", "sync_every": "1", "max_seq_len": "0"}, max_batch_size=8)
    assert config.max_batch_size == 8 and isinstance(config.max_batch_size, int)
    assert (config.max_tokens_default, config.weights_seed, config.sync_every, config.max_seq_len) == (32, 0, 1, 0)
    assert (config.preset, config.dtype, config.model_path) == ("tiny", "bfloat16", "/ckpt")


def test_every_declaration_is_complete():
    for name, f in DECLARED.items():
        meta = f.metadata
        assert meta["doc"].strip(), name
        assert isinstance(f.default, (int, str)), name
        if meta["limits"]:
            assert isinstance(f.default, int) and meta["limits"][0] <= f.default <= meta["limits"][1], name
        if meta["choices"]:
            assert f.default in meta["choices"], name


def test_max_batch_size_is_tritons_own_field():
    model_config = {"max_batch_size": 4, "parameters": {"preset": {"string_value": "tiny"}}}
    config = ServingConfig.from_triton_config(model_config)
    assert (config.max_batch_size, config.preset) == (4, "tiny")
    assert ServingConfig.from_triton_config({"max_batch_size": 16}).max_batch_size == 16
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['max_batch_size'\]"):
        build({"max_batch_size": "8"})  # not a parameter any more: Triton's field is the one place
    with pytest.raises(ValueError, match=r"parameter max_batch_size=65 is outside \[1, 64\]"):
        ServingConfig.from_triton_config({"max_batch_size": 65})


def test_repository_configs_restate_no_default():
    """config.pbtxt files may override settings, but none sets a value equal to its default (one place for each
    default), and every key they use is a valid setting."""
    for config in sorted((REPO_ROOT / "model_repository").glob("*/config.pbtxt")):
        text = re.sub(r"#.*", "", config.read_text())
        params = dict(re.findall(r'key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text))
        parsed = build(params)
        for key in params:
            assert getattr(parsed, key) != DECLARED[key].default, f"{config}: {key} restates its default"


def test_unknown_keys_are_rejected_and_listed():
    with pytest.raises(ValueError) as info:
        build({"preset": "tiny", "max_batch": "4", "colour": "red"})
    message = str(info.value)
    assert "unknown parameter(s) ['colour', 'max_batch']" in message
    assert "allowed:" in message and "'prefill_chunk'" in message and "'preset'" in message


@pytest.mark.parametrize("key", INTEGERS)
def test_integer_ranges(key):
    lo, hi = DECLARED[key].metadata["limits"]
    # max_tokens_default must stay <= max_tokens_limit
    extra = {"max_tokens_limit": "4096"} if key == "max_tokens_default" else \
        {"max_tokens_default": "1"} if key == "max_tokens_limit" else {}
    assert getattr(build({key: str(lo), **extra}), key) == lo  # both ends are allowed
    assert getattr(build({key: f" {hi} ", **extra}), key) == hi
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ValueError) as info:
            build({key: str(bad), **extra})
        assert str(info.value) == f"parameter {key}={bad} is outside [{lo}, {hi}]"
    for raw in ("eight", "1.5", "", "0x10"):
        with pytest.raises(ValueError) as info:
            build({key: raw})
        assert str(info.value) == f"parameter {key}={raw!r} is not an integer in [{lo}, {hi}]"


@pytest.mark.parametrize("key", CHOICES)
def test_bad_choice_is_rejected_listing_choices(key):
    choices = list(DECLARED[key].metadata["choices"])
    with pytest.raises(ValueError) as info:
        build({key: "no-such-choice"})
    assert str(info.value) == f"parameter {key}='no-such-choice' is not one of {choices}"
    for good in choices:
        assert getattr(build({key: good}), key) == good


def test_presets_are_the_preset_choices():
    from gptserve.engine import PRESETS

    assert DECLARED["preset"].metadata["choices"] == ("auto", *PRESETS)


def test_max_tokens_default_above_limit_is_rejected():
    with pytest.raises(ValueError, match=r"max_tokens_default=64 exceeds max_tokens_limit=32"):
        build({"max_tokens_default": "64", "max_tokens_limit": "32"})


def test_model_path_env_overrides_model_path(monkeypatch):
    assert build({"model_path": "/from/config"}).model_path == "/from/config"
    assert build({"model_path": "/from/config"}, env={"MODEL_PATH": "/from/env"}).model_path == "/from/env"
    assert build({}, env={"MODEL_PATH": "/from/env"}).model_path == "/from/env"
    assert build({"model_path": "/from/config"}, env={"MODEL_PATH": ""}).model_path == "/from/config"
    # without an explicit env mapping, the process environment is read
    monkeypatch.setenv("MODEL_PATH", "/from/process")
    assert ServingConfig.from_parameters({"model_path": "/from/config"}).model_path == "/from/process"
    monkeypatch.delenv("MODEL_PATH")
    assert ServingConfig.from_parameters({"model_path": "/from/config"}).model_path == "/from/config"


def test_docs_table_is_the_declaration():
    """docs/configuration.md shows exactly the table settings_table() derives from the declarations."""
    text = (REPO_ROOT / "docs" / "configuration.md").read_text()
    begin, end = "<!-- settings table: generated by gptserve.settings.settings_table() -->", "<!-- end of table -->"
    assert begin in text and end in text, "docs/configuration.md lost its table markers"
    table = text.split(begin, 1)[1].split(end, 1)[0].strip() + "\n"
    assert table == settings_table(), "regenerate with: python -c 'from gptserve.settings import settings_table; " \
                                      "print(settings_table())'"
