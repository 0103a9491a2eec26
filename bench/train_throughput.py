"""Training-step throughput of reid's full step: model forward, all seven loss terms, backward, AdamW.

    python bench/train_throughput.py                       # ViT-B/16 224 + BERT-base sizes, batch 128, bf16
    python bench/train_throughput.py --preset tiny --batch 16 --device cpu --steps 3   # smoke run

Run it in the same device call as ../shared/bench/gpu_anchor.py (the seed-literal step, bf16 eager
and bf16 + compile on the same card) and report ratios: host speed differs between machines.

Variants (``--variants``): ``bf16`` (autocast, eager), ``bf16_compile`` (+ ``torch.compile`` of both
encoders). Batches are made on the device once per step from pre-tokenised ids with CUHK-like
caption lengths and dynamic padding, so the data loader is not part of the measurement. FLOPs come
from ``torch.utils.flop_counter`` on one step; MFU is given against the card's measured bf16 matmul
rate (as gpu_anchor.py does) and against its nominal dense bf16 peak when known.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from reid.config import load_config
from reid.data import keys
from reid.engine.optim import build_optimizer
from reid.losses import Criterion
from reid.model import build_model

NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per NVIDIA's sheets
VOCAB = 30522  # BERT-base's
NUM_CLASSES = 11003  # CUHK-PEDES training identities


def make_batch(batch: int, image_size: tuple[int, int], device: torch.device, gen: torch.Generator) -> dict:
    """One training batch: random pixels, P x K person ids, three text fields of CUHK-like lengths."""
    out = {keys.IMAGES: torch.randn(batch, 3, *image_size, generator=gen).to(device)}
    out[keys.PIDS] = torch.arange(batch // 4).repeat_interleave(4).to(device)
    for name, (lo, hi) in {"id": (8, 25), "cloth": (15, 45), "neg_cloth": (15, 45)}.items():
        lengths = torch.randint(lo, hi + 1, (batch,), generator=gen) + 2  # + [CLS] [SEP]
        width = int(lengths.max())
        ids = torch.randint(1000, VOCAB, (batch, width), generator=gen)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        out[f"{name}_input_ids"] = (ids * mask).to(device)
        out[f"{name}_attention_mask"] = mask.to(device)
    out[keys.CLOTH_VALID] = torch.ones(batch, dtype=torch.bool, device=device)
    return out


def build(preset: str, image_size: tuple[int, int], device: torch.device, compile_: bool):
    cfg = load_config(None, [f"model.image_encoder.preset={preset}", f"model.text_encoder.preset={preset}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.disentangle, num_classes=NUM_CLASSES, image_size=image_size,
                        vocab_size=VOCAB).to(device)
    if compile_:
        model.compile_encoders()
    optimizer = build_optimizer(model, cfg.optim, fused=device.type == "cuda")
    return model, Criterion(cfg.disentangle), optimizer


def step(model, criterion, optimizer, batch, device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        total, _, _ = criterion(model(batch), batch)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_sample(model, criterion, batch: dict, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            total, _, _ = criterion(model(batch), batch)
        total.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch[keys.IMAGES].shape[0]


def matmul_tflops(device: torch.device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    sync(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    sync(device)
    return 2 * 8192**3 * 20 / (time.perf_counter() - start) / 1e12


def run_variant(name: str, args, device, gen) -> dict:
    model, criterion, optimizer = build(args.preset, tuple(args.image_size), device, name.endswith("compile"))
    batches = [make_batch(args.batch, tuple(args.image_size), device, gen) for _ in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        step(model, criterion, optimizer, batches[i % len(batches)], device)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {"variant": name, "step_s": median, "samples_per_s": args.batch / median}
    if device.type == "cuda":
        result["max_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=["tiny", "small", "base"])
    parser.add_argument("--image-size", type=int, nargs=2, default=[224, 224])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="bf16,bf16_compile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the JSON result here too")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    res = {"device": name, "torch": torch.__version__, "preset": args.preset, "batch": args.batch,
           "image_size": args.image_size}
    model, criterion, _ = build(args.preset, tuple(args.image_size), device, False)
    res["flops_per_sample_fwd_bwd"] = flops_per_sample(model, criterion, make_batch(min(args.batch, 16), tuple(args.image_size), device, gen), device)
    del model
    if device.type == "cuda":
        res["bf16_matmul_tflops"] = matmul_tflops(device)
    nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
    res["runs"] = []
    for variant in args.variants.split(","):
        run = run_variant(variant, args, device, gen)
        achieved = run["samples_per_s"] * res["flops_per_sample_fwd_bwd"] / 1e12  # TFLOP/s
        run["tflops"] = achieved
        if "bf16_matmul_tflops" in res:
            run["mfu_vs_measured_peak"] = achieved / res["bf16_matmul_tflops"]
        if nominal:
            run["mfu_vs_nominal_peak"] = achieved / nominal
        res["runs"].append(run)
        print(json.dumps(run), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
