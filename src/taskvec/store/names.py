"""Package names: ``org/name@version``, checked before they become paths, URLs or database keys.

org and name: 1-64 characters of letters, digits, ``.``, ``_``, ``-``, starting and ending with a letter or digit,
no ``..`` (so no path traversal, no hidden files, nothing a shell or URL needs to escape). version: numbers joined
by dots (``1``, ``1.2.0``), optionally ``-`` or ``+`` and a label (``1.0.0-rc.1``), at most 64 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TaskvecError

_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}(?:[-+][0-9A-Za-z](?:[0-9A-Za-z.-]{0,40}[0-9A-Za-z])?)?$")
RULE = ("org and name: 1-64 letters, digits, '.', '_', '-', starting and ending with a letter or digit, no '..'; "
        "version: dotted numbers such as 1.2.0, optionally -label or +label")


@dataclass(frozen=True)
class PackageRef:
    org: str
    name: str
    version: str | None = None

    @property
    def repo(self) -> str:
        return f"{self.org}/{self.name}"

    def __str__(self) -> str:
        return self.repo + (f"@{self.version}" if self.version else "")


def check_part(value: str, what: str) -> str:
    if not isinstance(value, str) or not _PART.match(value) or ".." in value:
        raise TaskvecError(f"package {what} {value!r}: not a valid {what} ({RULE})")
    return value


def check_version(value: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _VERSION.match(value):
        raise TaskvecError(f"package version {value!r}: not a valid version ({RULE})")
    return value


def parse_ref(ref: str, need_version: bool = True) -> PackageRef:
    """``org/name@1.0.0`` -> PackageRef; one error saying which part is wrong and the rule."""
    if not isinstance(ref, str) or len(ref) > 200:
        raise TaskvecError(f"package {str(ref)[:80]!r}: too long; write it as org/name@version ({RULE})")
    repo, at, version = ref.partition("@")
    org, slash, name = repo.partition("/")
    if not slash or "/" in name:
        raise TaskvecError(f"package {ref!r}: write it as org/name@version, e.g. acme/sentiment@1.0.0")
    if need_version and not at:
        raise TaskvecError(f"package {ref!r}: no version; write it as {repo}@VERSION, e.g. {repo}@1.0.0")
    return PackageRef(check_part(org, "org"), check_part(name, "name"), check_version(version) if at else None)
