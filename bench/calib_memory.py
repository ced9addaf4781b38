"""Peak memory of OmniQuant calibration at long sequence lengths (one process per setting).

    python bench/calib_memory.py [--settings 128x2048,32x8192] [--blocks 1] [--epochs 1]

Each setting calibrates the first ``--blocks`` block(s) for ``--epochs`` epoch(s), which is where the
peak is reached (every block has the same shape), and reports peak RSS (CPU) or peak allocated
memory (CUDA), the size of one activation stream, and seconds per block-epoch.
Writes bench/results/calib_memory.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class _Stop(Exception):
    pass


def run_one(nsamples: int, seqlen: int, blocks: int, epochs: int) -> dict:
    import torch

    import compresskit
    from compresskit.quant.omniquant import OmniQuantConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = compresskit.load_model("smollm2-135m", device=device)
    cfg = OmniQuantConfig(wbits=3, group_size=64, nsamples=nsamples, seqlen=seqlen, epochs=epochs, embed_bits=16,
                          preset="published")
    ids = compresskit.api.calibration_ids(model, tok, cfg)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times: list[float] = []
    t0 = time.perf_counter()

    def progress(n: int, message: str | None = None) -> None:
        times.append(time.perf_counter() - t0)
        if message.startswith(f"block {blocks + 1}/"):
            raise _Stop

    try:
        compresskit.quantize(model, cfg, calib=ids, progress=progress)
    except _Stop:
        pass
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    stream = nsamples * seqlen * model.config.hidden_size * 4
    return {"setting": f"{nsamples}x{seqlen}", "device": device, "peak_bytes": peak, "rss_after_load": base_rss,
            "stream_bytes": stream, "seconds_to_first_epoch": times[0] if times else None,
            "seconds_per_epoch": (times[blocks * epochs - 1] - times[0]) / max(blocks * epochs - 1, 1) if len(times) > 1 else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default="128x2048,32x8192")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n, length = map(int, args.one.split("x"))
        Path(args.json).write_text(json.dumps(run_one(n, length, args.blocks, args.epochs)))
        return
    rows = []
    for setting in args.settings.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            subprocess.run([sys.executable, __file__, "--one", setting, "--json", str(out), "--blocks",
                            str(args.blocks), "--epochs", str(args.epochs)], check=True)
            rows.append(json.loads(out.read_text()))
        r = rows[-1]
        print(f"{r['setting']}: peak {r['peak_bytes'] / 2**30:.2f} GiB, one stream {r['stream_bytes'] / 2**30:.2f} GiB, "
              f"first block-epoch done after {r['seconds_to_first_epoch']:.0f} s", flush=True)
    lines = ["| nsamples x seqlen | device | peak GiB | RSS after load GiB | one stream GiB | s to first block-epoch |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['device']} | {r['peak_bytes'] / 2**30:.2f} | {r['rss_after_load'] / 2**30:.2f} | "
              f"{r['stream_bytes'] / 2**30:.2f} | {r['seconds_to_first_epoch']:.0f} |" for r in rows]
    md = ("OmniQuant W3 g64 calibration of SmolLM2-135M (float32); streams on the CPU, micro-batch 1; "
          "the peak is reached in the first block (all blocks have the same shape).\n\n" + "\n".join(lines) + "\n")
    print(md)
    out = Path(__file__).parent / "results" / "calib_memory"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
