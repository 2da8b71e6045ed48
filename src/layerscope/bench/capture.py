"""Capture benchmark: every layer's maps against a plain forward, each variant in a process of its own."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from .common import spread

VARIANTS = ("plain", "ours", "hf_eager", "hf_sdpa", "timm_extract")
CONFIGS = {  # name -> (timm arch, patch, dim, heads); 12 blocks each
    "vit_t16": ("vit_tiny_patch16_224", 16, 192, 3),
    "vit_s8": ("vit_small_patch8_224", 8, 384, 6),
    "vit_b16": ("vit_base_patch16_224", 16, 768, 12),
}
FULL = [("vit_s8", 224), ("vit_s8", 480), ("vit_b16", 224)]
DEFAULT = [("vit_s8", 224)]  # a few minutes on 2 cores; --full for the whole set
QUICK = [("vit_t16", 224)]  # a smoke run: seconds, not minutes


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def attention_bytes(model: str, size: int, batch: int) -> int:
    """Bytes of every layer's full attention matrices in float32 (what eager extraction holds)."""
    _, patch, _, heads = CONFIGS[model]
    n = (size // patch) ** 2 + 1
    return 12 * heads * n * n * 4 * batch


def _build(model: str, size: int, variant: str, device: torch.device):
    arch, patch, dim, heads = CONFIGS[model]
    if variant.startswith("hf_"):
        from transformers import ViTConfig, ViTModel

        cfg = ViTConfig(hidden_size=dim, num_hidden_layers=12, num_attention_heads=heads, intermediate_size=4 * dim,
                        patch_size=patch, image_size=size)
        cfg._attn_implementation = "eager" if variant == "hf_eager" else "sdpa"
        net = ViTModel(cfg, add_pooling_layer=False).eval().to(device)
        if variant == "hf_eager":
            return lambda x: net(pixel_values=x, output_attentions=True).attentions
        return lambda x: net(pixel_values=x).last_hidden_state
    from ..backbones import TimmViT

    bb = TimmViT(model, arch, img_size=size, mean=(0.5,) * 3, std=(0.5,) * 3, pretrained=False).eval().to(device)
    if variant == "plain":
        return lambda x: bb.model(x)
    if variant == "ours":
        layers = list(range(bb.num_layers))
        return lambda x: bb.extract(x, layers, "cls_attention")[0]
    from timm.utils import AttentionExtract

    for blk in bb.model.blocks:
        blk.attn.fused_attn = False
    extractor = AttentionExtract(bb.model, method="hook")
    return lambda x: extractor(x)


def serve(model: str, size: int, batch: int, variant: str, device: str) -> None:
    """The process of one variant: build, warm up, then one timed forward per ``run`` line on stdin.

    Answers one JSON line per request on stdout: ``{"ready": true}`` after the warm-up,
    ``{"seconds": t}`` per ``run`` (the whole batch), ``{"peak_mb": m}`` for ``peak``.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    fn = _build(model, size, variant, dev)
    x = torch.rand(batch, 3, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mb()
    with torch.inference_mode():
        out = fn(x)  # warm-up
        del out
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            if line.strip() == "run":
                sync()
                t0 = time.perf_counter()
                out = fn(x)
                sync()
                seconds = time.perf_counter() - t0
                del out
                print(json.dumps({"seconds": seconds}), flush=True)
            elif line.strip() == "peak":
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else _rss_mb() - base
                print(json.dumps({"peak_mb": peak}), flush=True)
            else:
                return


class Worker:
    """A variant's process (``serve``), asked for one timed forward at a time."""

    def __init__(self, model: str, size: int, batch: int, variant: str, device: str):
        cmd = [sys.executable, "-m", "layerscope.cli.bench", "--serve", model, str(size), str(batch), variant,
               "--device", device]
        # a fixed mmap threshold makes glibc hand large blocks back on free, so peak RSS follows the
        # live tensors instead of the allocator's history (which differs between variants)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=env)

    def ask(self, request: str | None) -> dict:
        """Send ``request`` (None: only read) and return the next JSON answer.

        Raises:
            RuntimeError: the process ended; the message is its last stderr line.
        """
        if request is not None:
            self.proc.stdin.write(request + "\n")
            self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("{"):  # a library may print other lines
                return json.loads(line)
        self._err.seek(0)
        last = [t for t in self._err.read().strip().splitlines() if t.strip()]
        raise RuntimeError(last[-1] if last else f"exit code {self.proc.wait()}")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
        except OSError:  # already gone
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


def run_case(model: str, size: int, batch: int, device: str, rounds: int, memory_limit_gb: float) -> list[dict]:
    """Every variant of one (model, size, batch), interleaved over ``rounds``; one row per variant."""
    rows = {v: {"model": model, "size": size, "batch": batch, "variant": v, "device": device, "rounds": rounds}
            for v in VARIANTS}
    workers: dict[str, Worker] = {}
    need = attention_bytes(model, size, batch) / 2**30
    for v in VARIANTS:
        if v in ("hf_eager", "timm_extract") and need > memory_limit_gb:
            rows[v]["status"] = f"skipped: its attention maps alone need {need:.1f} GiB"
        else:
            workers[v] = Worker(model, size, batch, v, device)  # all start at once: startups overlap
    times: dict[str, list[float]] = {v: [] for v in workers}
    try:
        for v in list(workers):
            try:
                workers[v].ask(None)  # ready
            except RuntimeError as e:
                rows[v]["status"] = f"failed: {e}"
                workers.pop(v).close()
        for r in range(rounds):
            print(f"  {model} {size}px b{batch}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
            for v, w in list(workers.items()):
                try:
                    times[v].append(w.ask("run")["seconds"] / batch)
                except RuntimeError as e:
                    rows[v]["status"] = f"failed: {e}"
                    workers.pop(v).close()
        for v, w in workers.items():
            rows[v]["peak_mb"] = w.ask("peak")["peak_mb"]
    finally:
        for w in workers.values():
            w.close()
    base = times.get("plain", [])
    for v, ts in times.items():
        row = rows[v]
        row["seconds_per_image"], row["seconds_min"], row["seconds_max"] = spread(ts)
        if len(base) == len(ts) and base:
            ratios = [t / b for t, b in zip(ts, base)]  # within a round: the same machine state
            row["time_ratio"], row["ratio_min"], row["ratio_max"] = spread(ratios)
            if "peak_mb" in rows["plain"] and rows["plain"]["peak_mb"] > 0 and "peak_mb" in row:
                row["memory_ratio"] = row["peak_mb"] / rows["plain"]["peak_mb"]
        row.setdefault("status", "ok")
    return [rows[v] for v in VARIANTS]


CAPTURE_COLUMNS = ["model", "size", "batch", "variant", "rounds", "s/img", "ratio", "ratio_min", "ratio_max",
                   "peak_MB", "mem_ratio", "status"]


def _capture_line(row: dict) -> str:
    def num(key: str, fmt: str) -> str:
        v = row.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and v == v else "-"

    return (f"{row['model']:8s} {row['size']:4d} {row['batch']:5d} {row['variant']:13s} {row['rounds']:6d} "
            f"{num('seconds_per_image', '8.4f')} {num('time_ratio', '6.2f')} {num('ratio_min', '9.2f')} "
            f"{num('ratio_max', '9.2f')} {num('peak_mb', '8.1f')} {num('memory_ratio', '9.2f')}  {row['status']}")


def capture_table(cases, batches, device: str, rounds: int, memory_limit_gb: float) -> list[dict]:
    """Run every case and batch; print the table as it fills."""
    print(" ".join(CAPTURE_COLUMNS), flush=True)
    rows = []
    for model, size in cases:
        for batch in batches:
            for row in run_case(model, size, batch, device, rounds, memory_limit_gb):
                rows.append(row)
                print(_capture_line(row), flush=True)
    return rows
