"""Heavy libraries imported on first use, so that ``taskvec --help`` and argument errors answer at once.

``from .lazy import torch`` gives a stand-in whose first attribute access imports torch; every later access goes
to the real module. Annotations stay strings (``from __future__ import annotations``), so defining functions and
dataclasses never imports anything.
"""

import importlib
from types import ModuleType


class LazyModule(ModuleType):
    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_module"] = None

    def _load(self) -> ModuleType:
        module = self.__dict__["_module"]
        if module is None:
            module = importlib.import_module(self.__name__)
            self.__dict__["_module"] = module
        return module

    def __getattr__(self, attr: str):
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())


torch = LazyModule("torch")
