"""The engine against Hugging Face transformers' GPT2LMHeadModel on identical weights (fp32, CPU)."""
import torch

from gptserve.engine.reference import reference_logits
from gptserve.serving import GenerationRequest, generate

PROMPTS = [(5, 17, 200, 3), tuple(range(30, 71)), (300, 2, 9, 9, 9, 11, 400)]


def test_reference_logits_match_hf(hf_checkpoint, hf_engine):
    _, hf = hf_checkpoint
    for prompt in PROMPTS:
        ours = reference_logits(hf_engine.model, list(prompt))
        theirs = hf(torch.tensor([prompt])).logits[0]
        assert (ours - theirs).abs().max().item() < 1e-4


def test_greedy_tokens_and_step_logits_match_hf(hf_checkpoint, hf_engine):
    _, hf = hf_checkpoint
    new = 12
    requests = [GenerationRequest(prompt_ids=p, max_tokens=new, end_id=-1) for p in PROMPTS]
    results = generate(hf_engine, requests, record_logits=True)  # one ragged batch through the KV cache
    for prompt, result in zip(PROMPTS, results):
        out = hf.generate(
            torch.tensor([prompt]), max_new_tokens=new, do_sample=False, output_logits=True,
            return_dict_in_generate=True, pad_token_id=0, eos_token_id=None,
        )
        assert result.output_ids == out.sequences[0, len(prompt):].tolist()
        theirs = torch.cat(out.logits)  # [new, V]
        ours = torch.stack(result.step_logits)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() < 1e-4


def test_optimized_vs_reference_max_abs_diff_is_reported(hf_engine):
    diff = hf_engine.probe_max_abs_diff()
    assert 0.0 <= diff < 1e-4
