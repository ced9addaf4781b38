"""Peak memory while saving: RSS sampled every 2 ms during `compresskit.save` of the embedded model
(float32 in memory, stored as the source's bfloat16), against the bytes of the model's tensors.

    python bench/save_memory.py                      # float model (as a pruned or distilled one is saved)
    python bench/save_memory.py --quantize w4g64     # RTN-quantized first

Writes bench/results/save_memory.{md,json} (``--out``). Run it from a checkout of another commit with
``--out`` to compare: the number is this process's peak RSS above its RSS before the save.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (run by path)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--quantize", default="", help="w4g64 to RTN-quantize before saving")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "save_memory"))
    args = ap.parse_args()

    import compresskit

    model, tok = compresskit.load_model(args.model, device="cpu", dtype="float32")
    if args.quantize:
        bits, group = args.quantize.removeprefix("w").split("g")
        compresskit.quantize(model, wbits=int(bits), group_size=int(group))
    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    with tempfile.TemporaryDirectory() as tmp:
        before = rss_bytes()
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        compresskit.save(model, tok, Path(tmp) / "m")
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    extra = max(peak[0] - before, 0)
    row = {"model": args.model, "quantize": args.quantize or "-", "tensor_bytes": tensors, "rss_before": before,
           "peak_extra": extra, "ratio": (tensors + extra) / tensors, "seconds": seconds}
    md = ("| model | quantized | tensors MB | RSS before MB | peak above it MB | peak / model | save s |\n"
          "|---|---|---|---|---|---|---|\n"
          f"| {args.model} | {row['quantize']} | {tensors / 1e6:.0f} | {before / 1e6:.0f} | {extra / 1e6:.0f} | "
          f"{row['ratio']:.2f}x | {seconds:.1f} |\n\npeak / model: (the model's tensor bytes + the RSS the save added "
          "at its peak) / the model's tensor bytes.\n")
    write_results(args.out, md, {"settings": vars(args), "rows": [row]}, echo=True)


if __name__ == "__main__":
    main()
