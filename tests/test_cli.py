import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("dummy", "train", "evaluate", "explain", "preprocess", "bench"):
        assert cmd in r.stdout


def test_bad_command_is_one_line_exit_2():
    r = run_cli("trian")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "invalid choice" in r.stderr


def test_readme_and_ci_run_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    start = readme.index("<!-- test-command -->")
    block = readme[start:].split("```bash", 1)[1].split("```", 1)[0].strip()
    assert block and block in ci
