"""gptserve: a GPT-2-architecture decoder served by Triton, in three layers that import only downwards:

    gptserve.engine   torch: the model, KV cache, sampling, prefill / decode_step / generate
    gptserve.serving  requests, the stopping rule, static batches, the in-flight scheduler
    gptserve.triton   Triton's python backend: tensors, metrics, the two model classes

gptserve.settings declares every serving setting once; all three layers read it.
"""
