"""Static batching (gpt_large): a batch of requests generated together, each ended by its own Finisher."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .requests import GenerationRequest
from .stopping import Finisher


@dataclass
class GenerationResult:
    output_ids: list[int]
    text: str
    num_input_tokens: int
    finish_reason: str  # "length", "end_id" or "stop_word"
    step_logits: list[torch.Tensor] = field(default_factory=list)  # only when asked for (probes, tests)


def generate(engine, requests: list[GenerationRequest], record_logits: bool = False) -> list[GenerationResult]:
    """Generate for up to engine.slots requests together; one result per request, in order."""
    finishers = [Finisher(r, engine.tokenizer) for r in requests]

    def take(new_tokens: list[list[int]]) -> bool:
        for finisher, tokens in zip(finishers, new_tokens):
            finisher.push_all(tokens)
        return all(f.done for f in finishers)

    generation = engine.generate([r.prompt_ids for r in requests], requests, max(r.max_tokens for r in requests),
                                 on_tokens=take, record_logits=record_logits)
    results = []
    for row, (r, f) in enumerate(zip(requests, finishers)):
        sampled = len(f.ids) + (f.reason == "end_id")  # steps whose logits gave this row a token
        logits = [step[row] for step in generation.step_logits[:sampled]]
        results.append(GenerationResult(f.ids, f.final_text(), len(r.prompt_ids), f.reason, logits))
    return results
