"""The README's code blocks, verbatim.

* Blocks preceded by ``<!-- docs-test -->`` (the typical session: CPU-sized by design) run, in README order, as one
  bash script in a scratch folder that holds links to the repository (``run.py``, ``configs/``, ``survival3d/``,
  ``data_prep/``) and ``.venv`` → the environment running the tests, exactly as after the quick start.
* Every other ``run.py`` command line in a bash block (real CT under ``/data``, GPUs, multi-node) is parsed by the
  command-line parser, so that a renamed option or command breaks this test rather than the reader.
* The two quick-start commands (``main-command``, ``test-command``) are run verbatim by ``.ci/run`` (see
  ``tests/test_cli.py``); they are not run again here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def bash_blocks(text: str) -> list[tuple[str, str]]:
    """``[(marker, code), ...]`` for every fenced bash block; ``marker`` is the HTML comment on the line(s) right
    before it (``docs-test``, ``main-command``, ...) or ``""``."""
    out = []
    for m in re.finditer(r"((?:<!--\s*([\w-]+)\s*-->\s*\n)?)```bash\n(.*?)```", text, re.S):
        out.append((m.group(2) or "", m.group(3)))
    return out


def command_lines(code: str) -> list[str]:
    """The block's commands with ``\\`` continuations joined and comments removed."""
    joined = re.sub(r"\\\n\s*", " ", code)
    lines = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            lines.append(line)
    return lines


def test_readme_has_the_tested_session():
    blocks = bash_blocks(README.read_text())
    markers = [m for m, _ in blocks]
    assert markers.count("main-command") == 1 and markers.count("test-command") == 1
    assert markers.count("docs-test") >= 1
    tested = "\n".join(code for m, code in blocks if m == "docs-test")
    for cmd in ("dummy", "train", "evaluate", "explain"):
        assert f"python run.py {cmd}" in tested, cmd
    assert tested.lstrip().startswith("source .venv/bin/activate")


def test_untested_run_py_lines_parse():
    """Every ``run.py`` command outside the tested session names a real command with real options."""
    from survival3d.cli import build_parser

    parser = build_parser()
    checked = 0
    for marker, code in bash_blocks(README.read_text()):
        if marker in ("docs-test", "main-command", "test-command"):
            continue
        for line in command_lines(code):
            words = shlex.split(line)
            if "run.py" not in words:
                continue
            args = words[words.index("run.py") + 1:]
            args = [a for a in args if not (a.startswith("[") or a.endswith("]") and "=" not in a)]
            try:
                ns = parser.parse_args(args)
            except SystemExit as e:  # argparse's error exit
                pytest.fail(f"README line does not parse ({e}): {line}")
            assert ns.command == args[0]
            checked += 1
    assert checked >= 5


@pytest.mark.slow
@pytest.mark.timeout(2400)  # about 2 min on 2 idle cores; 20 min when other jobs load them 8-fold
def test_readme_session_runs_verbatim(tmp_path):
    if not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.skip("the tests do not run inside a virtual environment (no bin/activate to stand in for .venv)")
    script = "\n".join(code for m, code in bash_blocks(README.read_text()) if m == "docs-test")
    for name in ("run.py", "configs", "survival3d", "data_prep"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["PYTHONPATH"] = str(tmp_path)  # as in a checkout: run.py finds survival3d/ next to it
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=2300)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, f"README session failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    for path in ("data/dummy1/manifest.csv", "runs/quickstart/checkpoints/best.pt", "eval/quickstart/metrics.json",
                 "explain/quickstart/leaderboard.md"):
        assert (tmp_path / path).is_file(), path
    # no warning spam: the session's stderr holds log lines, not Python warnings
    warnings = [ln for ln in proc.stderr.splitlines() if "Warning:" in ln]
    assert not warnings, warnings[:5]
    print(f"README session: {elapsed:.0f} s")
