"""The task-vector store: teams publish task vectors, anyone holding the same base equips them.

One idea per module: ``fingerprint`` (what base a vector belongs to), ``codecs`` (compressed storage formats, pure
functions), ``encoded`` (those formats as a tensor source and a writer), ``names`` (``org/name@version``),
``package`` (a manifest plus content-addressed blobs). Nothing here imports torch at import time.
"""
