"""The installed ``taskvec`` console script, run as a user runs it: a fresh process, its exit status, its output."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from typer.testing import CliRunner

import taskvec
from taskvec.cli import app

COMMANDS = ["merge", "apply", "extract", "fingerprint", "inspect", "eval", "methods", "version", "push", "pull",
            "search", "show", "equip", "store"]
SRC = Path(__file__).resolve().parent.parent / "src"


def console_script() -> Path:
    """The ``taskvec`` next to this interpreter: the one `pip install` made from pyproject's [project.scripts]."""
    script = Path(sys.executable).parent / "taskvec"
    if not script.is_file():
        pytest.skip(f"no console script at {script}: install taskvec (pip install -e .)")
    return script


def run(*args, python=False, cwd=None):
    """Run the console script (or, with `python`, this interpreter) on this checkout's source."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", COLUMNS="100")
    cmd = [sys.executable, *args] if python else [console_script(), *args]
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_help_lists_the_commands():
    p = run("--help")
    assert p.returncode == 0, p.stderr
    for command in COMMANDS:
        assert f" {command} " in p.stdout, p.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    p = run(command, "--help")
    assert p.returncode == 0 and "Usage: taskvec " + command in p.stdout, p.stdout + p.stderr


def test_version():
    p = run("version")
    assert (p.returncode, p.stdout) == (0, f"taskvec {taskvec.__version__}\n")


def error_line(p) -> str:
    """The one line a failed command printed: nothing on stdout, no traceback."""
    lines = p.stderr.strip().splitlines()
    assert p.stdout == "" and len(lines) == 1 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_recipe_is_one_error_line(tmp_path):
    p = run("merge", "missing.yaml", "--out", "x", cwd=tmp_path)
    assert p.returncode == 2 and "missing.yaml" in error_line(p)
    assert not (tmp_path / "x").exists()


def test_usage_errors_are_one_line_with_status_2():
    p = run("frobnicate")
    line = error_line(p)
    assert p.returncode == 2 and "'frobnicate'" in line and all(c in line for c in COMMANDS)
    p = run("merge", "recipe.yaml")
    assert p.returncode == 2 and "--out" in error_line(p)
    p = run("merge", "recipe.yaml", "--out", "x", "--bogus")
    assert p.returncode == 2 and "--bogus" in error_line(p) and "taskvec merge --help" in error_line(p)


@pytest.mark.parametrize("exc, line", [
    (PermissionError(13, "Permission denied", "/models/ft/model.safetensors"),
     "error: /models/ft/model.safetensors: Permission denied"),
    (OSError(28, "No space left on device"), "error: No space left on device"),
    (MemoryError(), "error: out of memory"),
])
def test_os_and_memory_errors_are_one_line_with_status_2(monkeypatch, exc, line):
    """The safety net: such an error that no code turned into a TaskvecError still reads as one line."""
    import taskvec.merge

    def merge_recipe(*args, **kwargs):
        raise exc

    monkeypatch.setattr(taskvec.merge, "merge_recipe", merge_recipe)
    result = CliRunner().invoke(app, ["merge", "recipe.yaml", "--out", "x", "-q"])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", line + "\n")


def imported_modules(code: str) -> set[str]:
    p = run("-c", f"import sys; {code}; print(' '.join(sys.modules))", python=True)
    assert p.returncode == 0, p.stderr
    return set(p.stdout.split())


HEAVY = {"torch", "numba", "matplotlib", "numpy", "safetensors", "huggingface_hub"}


def test_the_cli_and_the_package_start_without_torch():
    assert not HEAVY & imported_modules("import taskvec.cli")
    assert not HEAVY & imported_modules("import taskvec; taskvec.TaskvecError, taskvec.__version__")
    assert "torch" in imported_modules("from taskvec import merge_recipe, TaskVector, MergeOptions, InspectReport")


@pytest.mark.parametrize("args", [["--help"], ["merge", "--help"], ["version"], ["frobnicate"], ["equip", "--help"],
                                  ["store", "serve", "--help"]])
def test_help_and_errors_do_not_import_torch(args):
    code = f"sys.argv = ['taskvec', *{args!r}]\nfrom taskvec.cli import main\ntry: main()\nexcept SystemExit: pass"
    p = run("-c", f"import sys\n{code}\nprint('torch' in sys.modules, 'numba' in sys.modules)", python=True)
    assert p.stdout.strip().endswith("False False"), p.stdout + p.stderr


def test_lazy_names_are_the_real_ones():
    from taskvec.merge import merge_recipe
    from taskvec.vector import TaskVector

    assert taskvec.merge_recipe is merge_recipe and taskvec.TaskVector is TaskVector
    assert set(taskvec.__all__) <= set(dir(taskvec))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        taskvec.nope  # noqa: B018
