#!/usr/bin/env python
"""Benchmark CT preprocessing on the real samples (numbers go to docs/benchmarks.md, section "CT preprocessing").

    python data_prep/bench_preprocess.py [--repeats 3] [--workers 1 2] [--cases 4] [--out bench_ct.json]

1. lung2 (512×512×61) → 128³ with the classical masker: read, pipeline and write times (wall and process CPU).
2. throughput of `run.py preprocess` batches: ``--cases`` copies of lung1/lung2 with N worker processes.
"""

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from survival3d.data.osic import CaseJob, run_preprocess_jobs  # noqa: E402
from survival3d.data.preprocess import PreprocessSettings, preprocess_case, preprocess_volume  # noqa: E402
from survival3d.data.readers import read_ct  # noqa: E402
from survival3d.data.samples import fetch_samples  # noqa: E402


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--out", default=None, help="JSON results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    samples = fetch_samples()
    settings = PreprocessSettings(masker={"name": "classical"})
    masker = settings.build_masker()
    preprocess_volume(read_ct(samples["lung1"]), settings, masker)  # warm-up (imports, allocator)
    single = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            vol, rw, rc = timed(lambda: read_ct(samples["lung2"]))
            res, pw, pc = timed(lambda: preprocess_volume(vol, settings, masker))
            _, tw, tc = timed(lambda: preprocess_case(samples["lung2"], tmp, "lung2", settings, masker=masker))
            single.append({"read_s": rw, "pipeline_s": pw, "pipeline_cpu_s": pc, "case_total_s": tw,
                           "case_total_cpu_s": tc, "lung_volume_l": res.qc["lung_volume_l"]})  # fmt: skip
        batches = []
        inputs = [samples["lung1"], samples["lung2"]]
        for workers in args.workers:
            out = Path(tmp) / f"batch{workers}"
            jobs = [CaseJob(id=f"c{i}", source=str(inputs[i % 2])) for i in range(args.cases)]
            summary, w, _ = timed(lambda: run_preprocess_jobs(jobs, out, settings, workers=workers, progress=False))
            batches.append({"workers": workers, "cases": args.cases, "wall_s": w, "cases_per_min": 60 * args.cases / w,
                            "failed": summary["failed"]})  # fmt: skip
            shutil.rmtree(out)
    best = min(single, key=lambda r: r["case_total_s"])
    result = {"lung2_128_classical": {"runs": single, "best": best}, "batches": batches}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
