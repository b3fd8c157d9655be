"""Write tokens: a random secret shown once, stored as its sha256, scoped to orgs.

A token is ``tvs_`` plus 43 URL-safe characters (256 random bits), so a plain sha256 suffices to store it (no
dictionary to guess from, no need for a slow hash); the server looks a token up by that digest. A token may publish
only under its orgs; any live token may upload blobs (content addressed, they name no org) and, on a ``--private``
server, read.
"""

from __future__ import annotations

import hashlib
import secrets

from ..errors import TaskvecError
from . import names

PREFIX = "tvs_"
COOKIE = "taskvec_token"  # the catalog's login cookie (HttpOnly, SameSite=Strict): reads only, never writes


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db, orgs: list[str], note: str = "") -> tuple[int, str]:
    """A new token for ``orgs`` in database ``db``: (id, the secret). Only the digest is stored."""
    if not orgs:
        raise TaskvecError("a token needs at least one org it may publish under: --org ORG")
    for org in orgs:
        names.check_part(org, "org")
    secret = new_secret()
    return db.add_token(digest(secret), secret[:10], list(orgs), note), secret


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
