import pytest
import torch

from gptserve.engine import Engine
from gptserve.settings import ServingConfig


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """A randomly initialised Hugging Face GPT2LMHeadModel saved as a checkpoint directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1234)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=256)
    model = GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def hf_engine(hf_checkpoint):
    return Engine(ServingConfig(model_path=str(hf_checkpoint[0])), device="cpu")


@pytest.fixture(scope="session")
def tiny_engine():
    return Engine(ServingConfig(preset="tiny"), device="cpu")
