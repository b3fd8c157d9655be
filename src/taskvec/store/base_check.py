"""Is this model the base a stored task vector was extracted from? Headers first, then tensor by tensor.

Names, shapes and dtypes are compared with the vector's record before anything is read ("different architecture",
"another dtype"); the bytes are compared as the base streams through the merge, each tensor's sha256 against the
recorded one, so a wrong base is refused naming the tensors that differ -- after at most ``LIMIT`` of them, before
the output is committed. ``force_base`` (``--force-base``) turns every refusal into a warning: right
for a model fine-tuned from the vector's base (adding a colleague's skill to your own model).
"""

from __future__ import annotations

import threading

from ..errors import TaskvecError
from .fingerprint import LEGACY_PREFIX, PREFIX, Fingerprinter, Fingerprinters, dtype_code

LIMIT = 5  # differing tensors named (and, without the override, the point where the merge stops)
OVERRIDE = "--force-base (MergeOptions(force_base=True))"


class _Vector:
    def __init__(self, label: str, base_info: dict):
        self.label = label
        self.ref = base_info.get("ref")
        self.root = base_info.get("fingerprint")
        self.tensors: dict[str, dict] = base_info.get("tensors") or {}
        self.differ: list[str] = []
        self.settled = False  # refused (or allowed) from headers: its bytes are not compared

    def of_base(self) -> str:
        return f"its base is {self.ref or 'unnamed'} ({self.root})"


class BaseCheck:
    """Built for a merge's stored task vectors that record a fingerprint; feed ``fingerprinter`` the base's bytes."""

    def __init__(self, base, vectors: list[tuple[str, dict]], force_base: bool = False):
        self.base, self.allow = base, force_base
        self.vectors = [_Vector(label, info) for label, info in vectors]
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self.new = Fingerprinter()
        self.new.on_tensor = self._compare
        self.legacy = None
        if any(v.root.startswith(LEGACY_PREFIX) for v in self.vectors):
            from ..fingerprint import Fingerprinter as LegacyFingerprinter

            self.legacy = LegacyFingerprinter()
        self.fingerprinter = Fingerprinters(self.new, self.legacy) if self.legacy else self.new
        for v in self.vectors:
            if v.tensors:
                self._check_headers(v)

    @classmethod
    def for_inputs(cls, base, inputs, force_base: bool = False) -> "BaseCheck | None":
        """None when there is nothing to check (no base, or no stored vector records a fingerprint)."""
        from ..inputs import StoredVectorInput

        vectors = [(i.label, i.manifest.get("base") or {}) for i in inputs if isinstance(i, StoredVectorInput)]
        vectors = [(label, info) for label, info in vectors
                   if str(info.get("fingerprint") or "").startswith((PREFIX, LEGACY_PREFIX))]
        return cls(base, vectors, force_base) if base is not None and vectors else None

    def _refuse(self, message: str) -> None:
        if not self.allow:
            raise TaskvecError(f"{message}; or pass {OVERRIDE} if {self.base.label} was fine-tuned from that base")
        with self._lock:
            self.notes.append(message + " (--force-base: merged anyway)")

    def _check_headers(self, v: _Vector) -> None:
        base = self.base
        parts = architecture_differences(base, {n: t["shape"] for n, t in v.tensors.items()})
        if parts:
            self._refuse(f"{v.label}: different architecture: {v.label} was extracted from another model than "
                         f"{base.label}: {'; '.join(parts)}; {v.of_base()}. Merge it into that base")
            v.settled = True
            return
        retyped = [n for n in v.tensors if dtype_code(base.info(n).dtype) != v.tensors[n]["dtype"]]
        if retyped:
            n = retyped[0]
            self._refuse(f"{v.label}: {base.label} stores {len(retyped)} tensors in another dtype than the base it "
                         f"was extracted from ({_few(retyped)}; {n!r} is {dtype_code(base.info(n).dtype)} here, "
                         f"{v.tensors[n]['dtype']} there); {v.of_base()}. Merge it into that base as stored")
            v.settled = True

    def _compare(self, name: str, record: dict) -> None:
        """Called as each base tensor's hash completes (from worker threads)."""
        for v in self.vectors:
            want = v.tensors.get(name)
            if v.settled or want is None or want["sha256"] == record["sha256"]:
                continue
            with self._lock:
                v.differ.append(name)
                count = len(v.differ)
            if count >= LIMIT and not self.allow:
                self._refuse(self._content_message(v, finished=False))

    def _content_message(self, v: _Vector, finished: bool) -> str:
        names = sorted(v.differ)
        count = f"{len(names)} of {len(v.tensors)} tensors differ" if finished else \
            f"the merge stopped after {len(names)} differing tensors"
        return (f"{self.base.label} is not the base {v.label} was extracted from: {count} ({_few(names)}); "
                f"{v.of_base()}. Merge it into that base")

    def finish(self) -> list[str]:
        """After the merge streamed: hash the base tensors it did not read, compare, refuse or return warnings."""
        for name in self.base.names():
            if not self.fingerprinter.has(name):
                self.fingerprinter.add(name, self.base.read(name))
        roots = {PREFIX: self.new.hexdigest(), LEGACY_PREFIX: self.legacy.hexdigest() if self.legacy else None}
        for v in self.vectors:
            if v.settled:
                continue
            if v.tensors:
                if v.differ:
                    self._refuse(self._content_message(v, finished=True))
            elif v.root.startswith(LEGACY_PREFIX) and roots[LEGACY_PREFIX] != v.root:
                self._refuse(f"{self.base.label} is not the base {v.label} was extracted from ({roots[LEGACY_PREFIX]}"
                             f" here); {v.of_base()}, an old fingerprint that cannot name the tensors that differ "
                             "(extract the vector again to record them). Merge it into that base")
            elif v.root.startswith(PREFIX) and roots[PREFIX] != v.root:
                self._refuse(f"{self.base.label} is not the base {v.label} was extracted from ({roots[PREFIX]} here);"
                             f" {v.of_base()}. Merge it into that base")
        return list(self.notes)


def architecture_differences(base, recorded: dict[str, list[int]]) -> list[str]:
    """How `base`'s headers differ from the tensors a vector's base had (name -> shape): its tensors missing here,
    tensors here it had not, and shapes that differ, each as a phrase naming a few; [] when they agree."""
    missing = [n for n in recorded if n not in base]
    extra = [n for n in base.names() if n not in recorded]
    reshaped = [n for n in recorded if n in base and list(base.info(n).shape) != recorded[n]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its base's tensors are missing ({_few(missing)})")
    if extra:
        parts.append(f"{len(extra)} are not in its base ({_few(extra)})")
    if reshaped:
        n = reshaped[0]
        parts.append(f"{len(reshaped)} have another shape ({_few(reshaped)}; {n!r} is {list(base.info(n).shape)} "
                     f"here, {recorded[n]} in its base)")
    return parts


def _few(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:LIMIT])
    return shown + (f" and {len(names) - LIMIT} more" if len(names) > LIMIT else "")
