"""Benchmark: roofline, engine variants and same-run peers (Hugging Face transformers, the engine's eager path).

    python -m bench.engine --preset gpt2-large --variants bf16-sdpa,bf16-flex,fp8-flex --peers hf,hf-static,eager

Writes bench-<preset>-<time>.json under --output and prints a markdown table. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import ast
import gc
import importlib
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from gptserve.engine import GREEDY, Engine
from gptserve.engine.attention import FLEX_BLOCK
from gptserve.engine.engine import KV_BLOCK
from gptserve.settings import ServingConfig

from . import header

VARIANTS = {
    "bf16-sdpa": dict(attention_backend="sdpa"),  # decode_linears auto: fused at batch 1, head above
    "bf16-torch": dict(decode_linears="torch"),  # torch's linears throughout (the default until run 21)
    "bf16-step": dict(attention_backend="sdpa", compile_region="step"),
    "bf16-flex": dict(attention_backend="flex"),
    "fp8wo-sdpa": dict(attention_backend="sdpa", fp8_mode="weight-only"),
    "bf16-splitkv": dict(attention_backend="splitkv"),  # the defaults on a GPU (attention_backend auto)
    "bf16-splitkv-tuned": dict(attention_backend="splitkv", kernel_tuning="coordinate-descent"),  # before run 50
    "fp8wo-splitkv": dict(attention_backend="splitkv", fp8_mode="weight-only"),
    "fp8wo-splitkv-kvfp8": dict(attention_backend="splitkv", fp8_mode="weight-only", kv_cache_dtype="fp8"),
    "int8wo-splitkv": dict(attention_backend="splitkv", fp8_mode="int8-weight-only"),
    "int8wo-splitkv-kvfp8": dict(attention_backend="splitkv", fp8_mode="int8-weight-only", kv_cache_dtype="fp8"),
    "bf16-fused": dict(decode_linears="fused"),
    "bf16-head": dict(decode_linears="head"),
    "bf16-fused-splitkv": dict(attention_backend="splitkv", decode_linears="fused"),
    "fp8wo-fused": dict(fp8_mode="weight-only", decode_linears="fused"),
    "fp8wo-fused-splitkv": dict(attention_backend="splitkv", fp8_mode="weight-only", decode_linears="fused"),
    "fp8-sdpa": dict(attention_backend="sdpa", fp8_mode="torch"),
    "fp8-flex": dict(attention_backend="flex", fp8_mode="torch"),
    "fp8-flex-kvfp8": dict(attention_backend="flex", fp8_mode="torch", kv_cache_dtype="fp8"),
    "te-flex": dict(attention_backend="flex", fp8_mode="transformer-engine"),
}


def cuda_time(fn, repeat: int = 1) -> float:
    """Median seconds of fn() over `repeat` runs, synchronised around each."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(gib: float = 2.0) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written: the roofline."""
    src_bytes = int(gib * 2**30)
    src = torch.empty(src_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = cuda_time(lambda: [dst.copy_(src) for _ in range(10)], repeat=5) / 10
    del src, dst
    torch.cuda.empty_cache()
    return 2 * src_bytes / seconds


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(0, vocab - 1, (length,), generator=gen).tolist()) for _ in range(batch)]


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def weight_bytes(engine: Engine) -> int:
    """Bytes a decode step reads for weights: every parameter and FP8 buffer except position embeddings, and
    except the token embedding when an FP8 LM head has its own copy (then only B rows of it are looked up)."""
    skip = ("wpe",) if isinstance(engine.model.lm_head, torch.nn.Linear) else ("wpe", "wte")
    seen, total = set(), 0
    for name, t in list(engine.model.named_parameters()) + list(engine.model.named_buffers()):
        if name.startswith(skip) or name.endswith((".k", ".v")) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def kv_bytes(engine: Engine, batch: int, prompt_len: int, new_tokens: int, block: int) -> float:
    """Mean KV bytes one decode step reads over a run: each row's cache up to its position, rounded up to the
    attention kernel's granularity `block` (1: only the live context)."""
    cfg = engine.cfg
    elem = torch.empty((), dtype=engine.resolved.kv_cache_dtype).element_size()
    lengths = [min(engine.context, -(-(prompt_len + step + 1) // block) * block) for step in range(new_tokens)]
    return batch * cfg.n_layer * 2 * cfg.n_embd * elem * statistics.mean(lengths)


def measure_engine(engine: Engine, batch: int, prompt_len: int, new_tokens: int, bandwidth: float) -> dict:
    vocab = engine.cfg.vocab_size
    batch_prompts = prompts(batch, prompt_len, vocab)
    slots = list(range(batch))

    def generate(rows):
        return engine.generate(batch_prompts[:rows], [GREEDY] * rows, new_tokens).tokens

    generate(batch)  # first run at this shape, untimed (warmup() compiled and captured every bucket)
    before = compiled_graphs()
    torch.cuda.reset_peak_memory_stats()
    e2e = cuda_time(lambda: generate(batch), repeat=3)
    prefill = cuda_time(lambda: engine.prefill(batch_prompts, slots), repeat=3)
    tokens = torch.zeros(batch, dtype=torch.int64, device="cuda")
    positions = torch.full((batch,), prompt_len, dtype=torch.int64, device="cuda")

    def decode_loop():
        nonlocal tokens
        for step in range(new_tokens):
            tokens = engine.decode_step(tokens, positions + step, prompt_len + step).argmax(-1)

    decode = cuda_time(decode_loop, repeat=3) / new_tokens
    after = compiled_graphs()
    weights = weight_bytes(engine)
    # SDPA reads the cache in KV_BLOCK buckets (Engine.kv_len_for), flex in FLEX_BLOCK blocks
    block = KV_BLOCK if engine.resolved.attention_backend == "sdpa" else FLEX_BLOCK
    read = weights + kv_bytes(engine, batch, prompt_len, new_tokens, block)
    useful = weights + kv_bytes(engine, batch, prompt_len, new_tokens, 1)
    return {
        "batch": batch,
        "prefill_ms": prefill * 1e3,
        "decode_ms_per_step": decode * 1e3,
        "e2e_s": e2e,
        "output_tok_s": batch * new_tokens / e2e,
        "decode_tok_s": batch / decode,
        "bytes_read_per_step": read,
        "mbu": read / decode / bandwidth,
        "floor_decode_tok_s": batch / (useful / bandwidth),
        "floor_fraction_e2e": (batch * new_tokens / e2e) / (batch / (useful / bandwidth)),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "recompiles": after - before,
        "decode_graphs": engine.decode_graph_count,
        "greedy_tokens_row0": generate(1)[0],
    }


def fp32_copy_fits(cfg) -> bool:
    """Whether an fp32 reference copy of the model fits on the GPU beside the engine (gpt2-large yes, 40B no)."""
    return cfg.n_layer * cfg.n_embd**2 < 2e9


def run_variant(preset: str, name: str, batches, prompt_len: int, new_tokens: int, bandwidth: float,
                compile_mode: str = "reduce-overhead", probe: bool = True, max_seq_len: int = 0) -> dict:
    settings = dict(VARIANTS.get(name, {}))
    serving = ServingConfig(preset=preset, compile_mode=compile_mode, max_tokens_limit=4096,
                            max_seq_len=max_seq_len, max_batch_size=max(batches), **settings)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    engine = Engine(serving, device="cuda")
    build_s = time.perf_counter() - t0
    warm = engine.warmup(prompt_len)
    ready_s = time.perf_counter() - t0
    row = {
        "preset": preset, "variant": name, "compile_mode": compile_mode, "fp8_mode": engine.resolved.fp8_mode,
        "decode_linears": engine.resolved.decode_linears,
        "kv_cache_positions": engine.context,
        "build_s": build_s, "warmup_s": sum(warm.values()), "ready_s": ready_s,
        "weights_gib": weight_bytes(engine) / 2**30, "results": [],
    }
    for b in batches:
        row["results"].append(measure_engine(engine, b, prompt_len, new_tokens, bandwidth))
        print(json.dumps({k: v for k, v in row["results"][-1].items() if k != "greedy_tokens_row0"}), flush=True)
    if probe and fp32_copy_fits(engine.cfg):
        row["max_abs_diff_vs_fp32_reference"] = engine.probe_max_abs_diff()
    del engine
    release_engines()
    return row


def release_engines():
    """Free the memory of engines no longer referenced. Compiled frames and CUDA graphs keep an engine's
    tensors alive: without this the 40B model's second variant ran out of memory (the first still held 135 GiB)."""
    torch.compiler.reset()
    gc.collect()
    torch.cuda.empty_cache()


def run_hf(preset: str, batches, prompt_len: int, new_tokens: int, static: bool) -> dict:
    """Hugging Face GPT2LMHeadModel.generate on the engine's weights (same seed), bf16."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptserve.engine.build import build, resolve
    from gptserve.engine.checkpoint import to_hf_names

    r = resolve(ServingConfig(preset=preset, dtype="bfloat16"), "cuda")
    cfg = r.model
    ours = build(r, fp8_mode="none")
    hf_cfg = GPT2Config(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, vocab_size=cfg.vocab_size,
                        n_positions=cfg.n_ctx, n_inner=cfg.d_ff, activation_function="gelu_new")
    with torch.device("cuda"):
        hf = GPT2LMHeadModel(hf_cfg).to(torch.bfloat16).eval()
    state = {k: v for k, v in ours.state_dict().items() if not k.endswith((".k", ".v"))}
    hf.load_state_dict(to_hf_names(state), strict=False)
    del ours
    row = {"preset": preset, "variant": "hf-static" if static else "hf", "results": []}
    for b in batches:
        ids = torch.tensor(prompts(b, prompt_len, cfg.vocab_size), device="cuda")
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                      attention_mask=torch.ones_like(ids))
        if static:
            kwargs["cache_implementation"] = "static"
        with torch.no_grad():
            # The static cache compiles at full length; the default (eager) cache needs only a short warm-up.
            hf.generate(ids, **{**kwargs, **({} if static else dict(max_new_tokens=4, min_new_tokens=4))})
            out = []
            seconds = cuda_time(lambda: out.append(hf.generate(ids, **kwargs)), repeat=1)
            out = out[0]
        row["results"].append({
            "batch": b, "e2e_s": seconds, "output_tok_s": b * new_tokens / seconds,
            "greedy_tokens_row0": out[0, prompt_len:].tolist(),
        })
        print(json.dumps({k: v for k, v in row["results"][-1].items() if k != "greedy_tokens_row0"}), flush=True)
    del hf
    torch.cuda.empty_cache()
    return row


DECISIVE_MARGIN = 1.0  # nats: the reference's top token is at least e times as likely as its runner-up


def accuracy(preset: str, variants: list[str], batch: int = 16, prompt_len: int = 128, steps: int = 64,
             max_seq_len: int = 0, embedding_std: float = 0.1, rows: int = 0) -> dict:
    """Each variant's decode steps against a reference, teacher-forced along the reference's greedy continuation:
    next-token agreement over every position and over the decisive ones (reference margin >= DECISIVE_MARGIN),
    and mean KL(reference || variant). rows: the prompts a decode step takes (0: the whole batch; 1: each prompt
    alone, through the batch-1 paths). The reference is the eager fp32 model where an fp32 copy fits, else the
    first bf16 variant. Seeded weights: GPT-2's init in the blocks, embeddings (and so the tied LM head) drawn with
    embedding_std, which gives the logits clear gaps without making the blocks chaotic (std 0.1 everywhere left
    bf16 agreeing with fp32 on 43% of tokens, docs/benchmarks.md)."""
    import torch.nn.functional as F

    from gptserve.engine.build import build, resolve

    r = resolve(ServingConfig(preset=preset, dtype="float32", compile_mode="none"), "cuda")
    ids = torch.tensor(prompts(batch, prompt_len, r.model.vocab_size, seed=7), device="cuda")  # [B, prompt_len]

    def engine_for(variant: str) -> Engine:
        settings = ServingConfig(preset=preset, compile_mode="reduce-overhead", max_batch_size=batch,
                                 max_seq_len=max_seq_len, **VARIANTS[variant])
        return Engine(settings, device="cuda", embedding_std=embedding_std)

    def decode_logits(engine: Engine, ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([decode_group(engine, ids[i: i + (rows or batch)]) for i in range(0, batch, rows or batch)])

    def decode_group(engine: Engine, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[0]
        logits = [engine.prefill([tuple(row) for row in ids[:, :prompt_len].tolist()], list(range(n)))]
        positions = torch.full((n,), prompt_len, dtype=torch.int64, device="cuda")
        with torch.no_grad():
            for t in range(steps - 1):
                logits.append(engine.decode_step(ids[:, prompt_len + t], positions + t, prompt_len + t).clone())
        return torch.stack(logits, dim=1).float()  # [n, steps, V]

    got = {}
    if fp32_copy_fits(r.model):
        name = "fp32 eager"
        reference = build(r, weights_seed=0, embedding_std=embedding_std)
        with torch.no_grad():
            for _ in range(steps):  # the reference's greedy continuation
                ids = torch.cat([ids, reference.forward_reference(ids)[:, -1:].argmax(-1)], dim=1)
            want = reference.forward_reference(ids)[:, prompt_len - 1: prompt_len - 1 + steps].float()
        del reference
        torch.cuda.empty_cache()
    else:  # the first bf16 variant is the reference: its greedy continuation, then its own logits along it
        name = next(v for v in variants if v.startswith("bf16"))
        engine = engine_for(name)
        out = engine.generate([tuple(row) for row in ids.tolist()], [GREEDY] * batch, steps).tokens
        ids = torch.cat([ids, torch.tensor(out, device="cuda")], dim=1)
        want = got[name] = decode_logits(engine, ids)
        del engine
        release_engines()

    def compare(p: torch.Tensor, q: torch.Tensor) -> dict:
        agree = p.argmax(-1) == q.argmax(-1)
        top2 = p.topk(2, dim=-1).values
        decisive = top2[..., 0] - top2[..., 1] >= DECISIVE_MARGIN
        kl = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), log_target=True, reduction="none").sum(-1)
        return {"greedy_agreement": agree.double().mean().item(),
                "decisive_agreement": agree[decisive].double().mean().item() if decisive.any() else None,
                "decisive_share": decisive.double().mean().item(), "mean_kl": kl.mean().item()}

    for v in variants:
        if v not in got:
            engine = engine_for(v)
            got[v] = decode_logits(engine, ids)
            del engine
            release_engines()
    base = next((v for v in variants if v.startswith("bf16")), variants[0])
    report = {"reference": name, "weights": f"seeded: blocks std 0.02 (GPT-2), embeddings std {embedding_std}",
              "decisive_margin_nats": DECISIVE_MARGIN, "batch": batch, "rows_a_step": rows or batch,
              "prompt_len": prompt_len, "steps": steps}
    for v, logits in got.items():
        report[v] = {"vs_reference": compare(want, logits), f"vs_{base}": compare(got[base], logits)}
    return report


def token_match(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def table(report: dict) -> str:
    lines = [
        f"device: {report['device']}  date: {report['date']}  copy bandwidth: {report['copy_bandwidth_tb_s']:.2f} TB/s",
        "| preset | variant | batch | prefill ms | decode ms/step | output tok/s | MBU | floor tok/s (decode) "
        "| e2e / floor | peak GiB | recompiles | ready s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        for r in row["results"]:
            lines.append(
                f"| {row['preset']} | {row['variant']} | {r['batch']} | {r.get('prefill_ms', float('nan')):.1f} | "
                f"{r.get('decode_ms_per_step', float('nan')):.3f} | {r['output_tok_s']:.0f} | "
                f"{r.get('mbu', float('nan')):.2f} | {r.get('floor_decode_tok_s', float('nan')):.0f} | "
                f"{r.get('floor_fraction_e2e', float('nan')):.2f} | {r.get('peak_mem_gib', float('nan')):.1f} | "
                f"{r.get('recompiles', '-')} | {row.get('ready_s', float('nan')):.0f} |"
            )
    for name, value in report.get("accuracy", {}).items():
        lines.append(f"accuracy {name}: {value}")
    return "\n".join(lines)


def set_constants(assignments: list[str]):
    """Each "module.NAME=literal": set that module attribute, which must exist."""
    for assignment in assignments:
        target, value = assignment.split("=", 1)
        module_name, name = target.rsplit(".", 1)
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise SystemExit(f"--constant {assignment}: {module_name} has no {name}")
        setattr(module, name, ast.literal_eval(value))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-large")
    p.add_argument("--variants", default="bf16-sdpa,bf16-flex,fp8-flex")
    p.add_argument("--peers", default="hf,hf-static,eager", help="any of hf, hf-static, eager; '' for none")
    p.add_argument("--batches", default="1,4,8,16")
    p.add_argument("--peer-batches", default="1,16")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--max-seq-len", type=int, default=0, help="KV-cache positions per slot (0: the model's)")
    p.add_argument("--output", default="artifacts/bench")
    p.add_argument("--accuracy", action="store_true",
                   help="also check each variant against a reference (fp32 where it fits, else bf16) and bf16: "
                        "greedy agreement, on decisive positions too, and KL")
    p.add_argument("--accuracy-rows", type=int, default=0,
                   help="prompts a decode step of the accuracy check takes (0: all; 1: each alone, the batch-1 paths)")
    p.add_argument("--constant", action="append", default=[], metavar="MODULE.NAME=VALUE",
                   help="set an engine module's constant before any engine is built (a Python literal), e.g. "
                        "gptserve.engine.decode_attention.PROGRAMS=528; repeatable, kept in the report")
    p.add_argument("--table", metavar="JSON", help="print the table of a saved report and exit (no GPU needed)")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench.engine needs a CUDA GPU")
    set_constants(args.constant)
    batches = [int(b) for b in args.batches.split(",") if b]  # none: the accuracy check alone
    peer_batches = [int(b) for b in args.peer_batches.split(",")]
    bandwidth = copy_bandwidth()
    report = {
        **header(), "command": "python -m bench.engine " + " ".join(sys.argv[1:] if argv is None else argv),
        "copy_bandwidth_tb_s": bandwidth / 1e12, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "constants": args.constant, "rows": [], "accuracy": {},
    }
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = out / f"bench-{args.preset}-{stamp}.json"

    def add(row):  # the report is rewritten after every row: a run cut short keeps what it measured
        report["rows"].append(row)
        path.write_text(json.dumps(report, indent=1))

    for name in filter(None, args.variants.split(",") if batches else []):
        add(run_variant(args.preset, name, batches, args.prompt_len, args.new_tokens, bandwidth,
                        max_seq_len=args.max_seq_len))
    peers = [x for x in args.peers.split(",") if x]
    if "eager" in peers:
        row = run_variant(args.preset, "bf16-sdpa", peer_batches, args.prompt_len, args.new_tokens, bandwidth,
                          compile_mode="none", probe=False, max_seq_len=args.max_seq_len)
        row["variant"] = "eager"
        add(row)
    for static in [s for s, key in ((False, "hf"), (True, "hf-static")) if key in peers]:
        add(run_hf(args.preset, peer_batches, args.prompt_len, args.new_tokens, static))
    base = next((r for r in report["rows"] if r["variant"].startswith("bf16") and r.get("compile_mode") != "none"),
                None)
    if base:
        want = base["results"][0]["greedy_tokens_row0"]
        for row in report["rows"]:
            if row is not base and row["results"] and row["results"][0]["batch"] == base["results"][0]["batch"]:
                got = row["results"][0]["greedy_tokens_row0"]
                report["accuracy"][f"{row['variant']} greedy token match vs {base['variant']}"] = token_match(want, got)
    if args.accuracy:
        # the 40B: 8 prompts of 256 steps, 2,048 positions (8 x 64 left one position worth 0.2% of the agreement)
        large = args.preset == "gpt-large-40b"
        report["accuracy_teacher_forced"] = accuracy(args.preset, [v for v in args.variants.split(",") if v],
                                                     batch=8 if large else 16, steps=256 if large else 64,
                                                     max_seq_len=args.max_seq_len, rows=args.accuracy_rows)
        print(json.dumps(report["accuracy_teacher_forced"], indent=1))
    path.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
