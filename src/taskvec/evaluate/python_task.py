"""The python task: a user's function scores the candidate's weights.

It runs the user's own code (imported with importlib, as ``python file.py`` would): that is the point of the task
type, so only use tasks files you trust. The function takes ``dict[str, torch.Tensor]`` and needs no folder, so a
tuner can score merges held in memory.
"""

import importlib
import importlib.util
import math
import sys
from pathlib import Path

from ..errors import TaskvecError


def load_function(spec: str, folder: Path, where: str):
    """``path/to/file.py:name`` (relative to the tasks file) or ``package.module:name`` -> the callable."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise TaskvecError(f"{where}: field 'function' is {spec!r}; write file.py:function or module:function")
    if target.endswith(".py"):
        path = folder / target
        if not path.is_file():
            raise TaskvecError(f"{where}: function file {path} does not exist (paths are relative to the tasks file)")
        module_name = f"taskvec_eval_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(module_name, None)
            raise TaskvecError(f"{where}: importing {path} failed: {type(e).__name__}: {e}") from e
        origin = str(path)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise TaskvecError(f"{where}: cannot import module {target!r} ({type(e).__name__}: {e})") from e
        origin = f"module {target}"
    fn = getattr(module, name, None)
    if not callable(fn):
        raise TaskvecError(f"{where}: {origin} has no function {name!r}")
    return fn


def run_python(task, weights: dict, where: str) -> float:
    """Call the function; anything but a finite number is the user's to fix."""
    value = task._fn(weights)
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise TaskvecError(f"{where}: function {task.function} returned {type(value).__name__}, "
                           f"not a number; return a float (higher is better)") from None
    if not math.isfinite(score):
        raise TaskvecError(f"{where}: function {task.function} returned {score}; return a finite number")
    return score
