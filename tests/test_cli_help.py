"""The command line's first impression: program name, --version, defaults in --help, plain-text help, did-you-mean
with the full key, and missing paths reported before the heavy imports."""

import subprocess
import sys
from pathlib import Path

import pytest

from survival3d import __version__
from survival3d.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _py(code: str, *args: str, cwd=ROOT):
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_console_script_name_and_version(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/survival3d", "--version"])
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"survival3d {__version__}"
    monkeypatch.setattr(sys, "argv", ["run.py"])
    assert build_parser().prog == "run.py"
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/survival3d"])
    assert "usage: survival3d train" in build_parser()._subparsers._group_actions[0].choices["train"].format_usage()


def _help(command: str) -> str:
    return build_parser()._subparsers._group_actions[0].choices[command].format_help()


def test_help_shows_defaults_and_plain_text():
    text = _help("explain")
    assert "(default: head,head_grid,gradcam,occlusion_coarse" in " ".join(text.split())
    dummy = " ".join(_help("dummy").split())
    assert "default" in dummy
    bench = _help("bench")
    assert "``" not in bench and "::" not in bench and "Examples:" in bench
    assert "--steps STEPS" in bench and "(default: 10)" in " ".join(bench.split())


def test_did_you_mean_keeps_the_section(capsys):
    assert main(["train", "model.dpeth=3"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'model.depth'?" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["evaluate", "explain"])
def test_missing_paths_are_reported_before_torch_is_imported(command, tmp_path):
    code = ("import sys; from survival3d.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules, 'pandas' in sys.modules)")
    proc = _py(code, command, "--checkpoint", str(tmp_path / "nope"), "--data", str(tmp_path / "nope.csv"),
               "--out", str(tmp_path / "o"))
    assert proc.stdout.split() == ["1", "False", "False"], proc.stdout + proc.stderr
    assert "nope.csv" in proc.stderr and "--data" in proc.stderr
