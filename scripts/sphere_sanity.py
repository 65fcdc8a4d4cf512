"""Can the survival model learn? Train it on the bright-sphere toy task for a few hundred CPU steps.

    python scripts/sphere_sanity.py --steps 300 --out sphere_sanity.json model.patch_size=4 head.beta_init=5

See :mod:`survival3d.models.sanity`. Prints one JSON line per evaluation; ``--out`` writes all of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from survival3d.config import ExperimentConfig, load_config  # noqa: E402
from survival3d.models.sanity import run_sphere_sanity  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-val", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.patch_size=4")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(None, args.overrides, schema=ExperimentConfig)
    result = run_sphere_sanity(cfg, steps=args.steps, size=args.size, n_train=args.n_train, n_val=args.n_val,
                               batch=args.batch, lr=args.lr, warmup=args.warmup, seed=args.seed,
                               eval_every=args.eval_every, progress=True)
    result["args"] = vars(args)
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
