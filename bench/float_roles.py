"""Which linear role's quantization costs retrieval: a quantized model with one role's float weights restored
at a time (every block's q_proj, then every block's k_proj, ...), scored on passkey.

    python bench/float_roles.py QUANTIZED_DIR                       # e.g. bench/omniquant_stage.py's block model
    python bench/float_roles.py QUANTIZED_DIR --roles q_proj,down_proj --lengths 4096 --trials 20

The float weights come from ``--parent`` (the model QUANTIZED_DIR was made from). ``none`` is the quantized
model as saved. A role whose restoration lifts passkey well above ``none`` is where retrieval is lost; with 10
trials a row moves by 10-30 points on noise alone, so read differences of one or two trials as ties.
Writes bench/results/float_roles.{md,json} (``--out``).
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

from _results import write_results  # bench/_results.py (run by path)

ROLES = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a saved quantized model")
    ap.add_argument("--parent", default="smollm2-135m")
    ap.add_argument("--roles", default=ROLES)
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "float_roles"))
    args = ap.parse_args()

    import compresskit
    from compresskit.core.arch import get_arch, get_module, set_module

    parent, tok = compresskit.load_model(args.parent, device="cpu")
    arch = get_arch(parent)
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    for role in ["none", *args.roles.split(",")]:
        model, _ = compresskit.load_model(args.model, device="cpu")
        if role != "none":
            path = getattr(arch, role)
            for mine, theirs in zip(arch.blocks_of(model), arch.blocks_of(parent)):
                set_module(mine, path, copy.deepcopy(get_module(theirs, path)))
        report = compresskit.evaluate(model, tok, tasks=("passkey",), lengths=lengths, passkey_trials=args.trials,
                                      seed=args.seed, cache=False)
        rows.append({"float_role": role, **{f"passkey@{r.length}": r.score for r in report.rows}})
        print(rows[-1], flush=True)
    keys = [f"passkey@{n}" for n in lengths]
    md = (f"{args.model} with one role's float weights (from {args.parent}) restored in every block; passkey, "
          f"{args.trials} trials per length, seed {args.seed}.\n\n| float role | " + " | ".join(keys) + " |\n|"
          + "---|" * (1 + len(keys)) + "\n"
          + "\n".join(f"| {r['float_role']} | " + " | ".join(f"{r[k]:.0f}%" for k in keys) + " |" for r in rows) + "\n")
    write_results(args.out, md, {"settings": vars(args), "rows": rows}, echo=True)


if __name__ == "__main__":
    main()
