#!/usr/bin/env python
"""Patient-level k-fold splits stratified by event: writes a CSV with id,fold (and the patient column).

    python data_prep/make_splits.py --manifest OUT/manifest.csv --folds 5 --seed 0 --out OUT/splits.csv
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from survival3d.data.splits import patient_kfold, write_splits  # noqa: E402
from survival3d.errors import InputError, Survival3DError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="manifest CSV (id, event, ...)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-column", default=None, help="patient column when a patient has several rows")
    p.add_argument("--out", required=True, help="output CSV")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = Path(args.manifest)
        if not path.is_file():
            raise InputError("file not found", path=path)
        df = pd.read_csv(path)
        splits = patient_kfold(df, args.folds, seed=args.seed, group_column=args.group_column)
    except Survival3DError as e:
        print(f"make_splits: error: {e}", file=sys.stderr)
        return e.exit_code
    write_splits(splits, args.out)
    counts = splits.assign(event=df["event"].to_numpy()).groupby("fold")["event"].agg(["size", "sum"])
    logging.getLogger("make_splits").info("folds (cases, events):\n%s", counts.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
