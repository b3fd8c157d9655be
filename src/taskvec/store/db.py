"""The store's metadata in SQL, through SQLAlchemy 2.x: tokens, published versions, their tags and files.

A SQLite file by default, PostgreSQL (or any SQLAlchemy database) by URL; portable SQL only. Nothing lives in the
server process: uniqueness is the database's (a unique constraint on ``(org, name, version)``), and a version is
published in one transaction with its tags and files, so it is visible whole or not at all -- several server
processes can share one database. Publishing and garbage collection exclude each other through one row
(``store_lock``): a publish checks its blobs and inserts its version while holding it, and a collection re-checks
that a blob is unreferenced and deletes it while holding it, so no version can be published over a deleted blob.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import (BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event, exists, func, or_, select, update)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


class Base(DeclarativeBase):
    pass


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the secret; the secret is never stored
    hint: Mapped[str] = mapped_column(String(16))  # its first characters, to tell tokens apart in a listing
    note: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    orgs: Mapped[list[TokenOrg]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class TokenOrg(Base):
    __tablename__ = "token_orgs"
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), primary_key=True)
    org: Mapped[str] = mapped_column(String(64), primary_key=True)


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("org", "name", "version", name="uq_versions_ref"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    org: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(64))
    content_digest: Mapped[str] = mapped_column(String(64))  # sha256 of the manifest without its `created` time
    manifest: Mapped[str] = mapped_column(Text)  # the manifest JSON as published
    base_fingerprint: Mapped[str] = mapped_column(String(100), index=True)
    model_type: Mapped[str | None] = mapped_column(String(100), index=True, nullable=True)
    architectures: Mapped[str] = mapped_column(Text, default="")  # " A B ": searched as " A "
    description: Mapped[str] = mapped_column(Text, default="")
    tags_text: Mapped[str] = mapped_column(Text, default="")
    license: Mapped[str] = mapped_column(String(100))
    compression: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    published: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id"), nullable=True)
    tags: Mapped[list[VersionTag]] = relationship(cascade="all, delete-orphan", lazy="selectin")
    files: Mapped[list[VersionFile]] = relationship(cascade="all, delete-orphan", lazy="selectin")

    @property
    def ref(self) -> str:
        return f"{self.org}/{self.name}@{self.version}"

    def summary(self) -> dict:
        m = json.loads(self.manifest)
        return {"ref": self.ref, "name": f"{self.org}/{self.name}", "version": self.version,
                "base": m["base"], "model_type": self.model_type, "architectures": m["architecture"]["architectures"],
                "description": self.description, "tags": m["tags"], "license": self.license,
                "compression": self.compression, "size": self.size, "published": _iso(self.published)}


class VersionTag(Base):
    __tablename__ = "version_tags"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class VersionFile(Base):
    __tablename__ = "version_files"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    path: Mapped[str] = mapped_column(String(200), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # which versions hold a blob (for a later GC)
    size: Mapped[int] = mapped_column(BigInteger)


class StoreLock(Base):
    """One row, written at the start of every publish and collection: they run one at a time (see the module)."""
    __tablename__ = "store_lock"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


def _iso(t: datetime) -> str:
    if t.tzinfo is None:  # SQLite hands back naive datetimes; they were stored in UTC
        t = t.replace(tzinfo=timezone.utc)
    return t.isoformat()


def content_digest(manifest: dict) -> str:
    """What makes two publications of a version the same: the manifest without its `created` time (a re-push of
    the same folder with the same metadata), canonically serialised."""
    body = {k: v for k, v in manifest.items() if k != "created"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Published:
    status: str  # "created", "exists" (identical content: idempotent) or "conflict" (other content)
    version: Version


class Database:
    """One SQLAlchemy engine and its sessions; every method is one short transaction."""

    def __init__(self, url: str):
        self.url = url
        kwargs: dict = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._create_tables()

    def _create_tables(self) -> None:
        for attempt in range(5):  # several servers starting on one new database may race to create the tables
            try:
                Base.metadata.create_all(self.engine)
                with self.sessions.begin() as s:
                    if s.get(StoreLock, 1) is None:
                        s.add(StoreLock(id=1, generation=0))
                return
            except (OperationalError, IntegrityError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def close(self) -> None:
        self.engine.dispose()

    # tokens
    def add_token(self, digest: str, hint: str, orgs: list[str], note: str = "") -> int:
        with self.sessions.begin() as s:
            token = Token(digest=digest, hint=hint, note=note, created=datetime.now(timezone.utc),
                          orgs=[TokenOrg(org=o) for o in sorted(set(orgs))])
            s.add(token)
            s.flush()
            return token.id

    def token_orgs(self, digest: str) -> list[str] | None:
        """The orgs of a live token with this digest; None for an unknown or revoked one."""
        with self.sessions() as s:
            token = s.scalar(select(Token).where(Token.digest == digest))
            if token is None or token.revoked:
                return None
            return [o.org for o in token.orgs]

    def token_id(self, digest: str) -> int | None:
        with self.sessions() as s:
            return s.scalar(select(Token.id).where(Token.digest == digest, Token.revoked.is_(False)))

    def list_tokens(self) -> list[dict]:
        with self.sessions() as s:
            return [{"id": t.id, "hint": t.hint, "note": t.note, "orgs": [o.org for o in t.orgs],
                     "created": _iso(t.created), "revoked": t.revoked}
                    for t in s.scalars(select(Token).order_by(Token.id))]

    def revoke_token(self, token_id: int) -> bool:
        with self.sessions.begin() as s:
            token = s.get(Token, token_id)
            if token is None:
                return False
            token.revoked = True
            return True

    # versions
    def publish(self, manifest: dict, manifest_json: str, token_id: int | None,
                check: Callable[[], None] | None = None) -> Published:
        """Insert a version with its tags and files in one transaction; the database's unique constraint decides
        between concurrent publishers of the same version. ``check`` (the blobs are all there) runs inside that
        transaction, holding the store lock, so a collection cannot delete a blob between the check and the insert."""
        org, name = manifest["name"].split("/", 1)
        digest = content_digest(manifest)
        arch = manifest["architecture"]
        row = Version(
            org=org, name=name, version=manifest["version"], content_digest=digest, manifest=manifest_json,
            base_fingerprint=manifest["base"]["fingerprint"], model_type=arch.get("model_type"),
            architectures=" " + " ".join(arch.get("architectures") or []) + " ",
            description=manifest.get("description", ""), tags_text=" ".join(manifest.get("tags", [])),
            license=manifest["license"], compression=manifest["compression"], size=manifest["size"],
            published=datetime.now(timezone.utc), token_id=token_id,
            tags=[VersionTag(tag=t) for t in sorted(set(manifest.get("tags", [])))],
            files=[VersionFile(path=f["path"], sha256=f["sha256"], size=f["size"]) for f in manifest["files"]],
        )
        try:
            with self.sessions.begin() as s:
                _lock(s)
                if check is not None:
                    check()
                s.add(row)
            return Published("created", row)
        except IntegrityError:
            existing = self.get(org, name, manifest["version"])
            if existing is None:  # pragma: no cover -- another constraint failed
                raise
            return Published("exists" if existing.content_digest == digest else "conflict", existing)

    def get(self, org: str, name: str, version: str) -> Version | None:
        with self.sessions() as s:
            return s.scalar(select(Version).where(Version.org == org, Version.name == name,
                                                  Version.version == version))

    def versions(self, org: str, name: str) -> list[Version]:
        with self.sessions() as s:
            return list(s.scalars(select(Version).where(Version.org == org, Version.name == name)
                                  .order_by(Version.published.desc(), Version.id.desc())))

    def latest(self, org: str, limit: int = 500) -> list[Version]:
        """The newest version of each package of ``org`` (the catalog's org page), newest first."""
        newest = select(func.max(Version.id)).where(Version.org == org).group_by(Version.name)
        with self.sessions() as s:
            return list(s.scalars(select(Version).where(Version.id.in_(newest))
                                  .order_by(Version.published.desc(), Version.id.desc()).limit(limit)))

    def search(self, q: str | None = None, name: str | None = None, org: str | None = None,
               tags: list[str] | tuple[str, ...] = (), base: str | None = None, architecture: str | None = None,
               limit: int = 50, offset: int = 0) -> tuple[int, list[Version]]:
        """Versions matching every filter given, newest first, and how many match in all. ``name`` and ``q``
        match case-insensitive substrings (``q``: every word in the name, description or tags)."""
        stmt = select(Version)
        full = func.lower(Version.org + "/" + Version.name)
        if name:
            stmt = stmt.where(full.contains(name.lower(), autoescape=True))
        if org:
            stmt = stmt.where(Version.org == org)
        for tag in tags:
            stmt = stmt.where(exists().where(VersionTag.version_id == Version.id, VersionTag.tag == tag))
        if base:
            stmt = stmt.where(Version.base_fingerprint == base)
        if architecture:
            stmt = stmt.where(or_(Version.model_type == architecture,
                                  Version.architectures.contains(f" {architecture} ", autoescape=True)))
        for word in (q or "").lower().split():
            stmt = stmt.where(or_(full.contains(word, autoescape=True),
                                  func.lower(Version.description).contains(word, autoescape=True),
                                  func.lower(Version.tags_text).contains(word, autoescape=True)))
        with self.sessions() as s:
            total = s.scalar(select(func.count()).select_from(stmt.subquery()))
            rows = s.scalars(stmt.order_by(Version.published.desc(), Version.id.desc()).limit(limit).offset(offset))
            return total, list(rows)

    def collect(self, candidates: Iterable[str], delete: Callable[[str], None]) -> list[str]:
        """Delete (``delete(digest)``) those of ``candidates`` that no published version lists, holding the store
        lock so that no publish can start using one meanwhile; returns the digests deleted."""
        wanted = sorted(set(candidates))
        gone = []
        with self.sessions.begin() as s:
            _lock(s)
            for i in range(0, len(wanted), 500):
                batch = wanted[i:i + 500]
                used = set(s.scalars(select(VersionFile.sha256).where(VersionFile.sha256.in_(batch))))
                for digest in batch:
                    if digest not in used:
                        delete(digest)
                        gone.append(digest)
        return gone

    def referenced(self) -> set[str]:
        """Every blob digest a published version lists."""
        with self.sessions() as s:
            return set(s.scalars(select(VersionFile.sha256).distinct()))


def _lock(session) -> None:
    """Take the store lock for the rest of ``session``'s transaction (a row write: SQLite's single writer, a row lock
    elsewhere)."""
    session.execute(update(StoreLock).where(StoreLock.id == 1).values(generation=StoreLock.generation + 1))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets readers and one writer (from any process) share the file; wait for a lock rather than fail."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
