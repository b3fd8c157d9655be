"""Garbage collection: remove the blobs no published version lists -- what abandoned pushes left (a push uploads its
blobs before its manifest, and a push cut off, refused or given up leaves them behind) -- and stale uploads.

A blob is removed only once it is older than a grace period (default a day), so the blobs of a push in progress
are spared, and only while holding the store lock, after checking again that no version lists it (see db.py): a
publish can never end up referring to a removed blob. A push that found such an old blob already present just
before it was removed is told so when it publishes, and `taskvec push` uploads it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BATCH = 100  # blobs removed per hold of the store lock, so publishes wait at most one batch


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    young: int = 0  # orphans within the grace period, kept
    young_bytes: int = 0
    undated: int = 0  # orphans whose filesystem gives no modification time, kept
    referenced: int = 0  # blobs published versions list
    incoming_removed: int = 0


def collect_garbage(db, blobs, grace_seconds: float, dry_run: bool = False) -> GcReport:
    """Remove orphan blobs older than ``grace_seconds`` and uploads in ``incoming/`` untouched for as long."""
    report = GcReport()
    listed = db.referenced()
    due: dict[str, int] = {}
    for digest, size, age in blobs.listing():
        if digest in listed:
            report.referenced += 1
        elif age is None:
            report.undated += 1
        elif age < grace_seconds:
            report.young += 1
            report.young_bytes += size
        else:
            due[digest] = size
    if dry_run:
        report.removed = sorted(due)
    else:
        digests = sorted(due)
        for i in range(0, len(digests), BATCH):
            report.removed += db.collect(digests[i:i + BATCH], blobs.remove)
        report.incoming_removed = blobs.clean_incoming(grace_seconds)
    report.removed_bytes = sum(due[d] for d in report.removed)
    return report
