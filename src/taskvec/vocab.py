"""Models whose vocabularies differ: rows of the embedding and LM-head tensors matched by token string.

A recipe's ``tokenizer_source`` (as in mergekit) names the output's vocabulary: ``base``, ``union`` (the base's
tokens, then every other model's tokens the base lacks, in the order the models are listed) or a model. Each model
is then seen through an ``AlignedCheckpoint``: its vocabulary tensors with the output's rows, gathered by token. A
row that every model has (the base included) merges as usual; a row only some models have is the average of
theirs (one model's own row when only it has the token), set after the merge by ``VocabAlignment.patch``. Rows
without a token (padding beyond the tokenizer) are matched by position.
"""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import TaskvecError
from .io.checkpoint import Checkpoint, TensorInfo

# the module names (the part before .weight / .bias) of tensors whose first dimension is the vocabulary
ROW_MODULES = {"embed_tokens", "word_embeddings", "wte", "tok_embeddings", "embed_in", "shared", "lm_head",
               "embed_out", "decoder", "predictions"}
INPUT_EMBEDDINGS = ("embed_tokens", "word_embeddings", "wte", "tok_embeddings", "embed_in", "shared")
PLACEHOLDER = "\0row"  # a row no token names: matched by position


def module_of(name: str) -> str:
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else ""


@dataclass
class Vocabulary:
    """One model's rows: the token each embedding row stands for (placeholders where none does)."""

    label: str
    folder: Path | None
    rows: list[str]
    special: set[str] = field(default_factory=set)

    @property
    def tokens(self) -> int:
        return sum(1 for t in self.rows if not t.startswith(PLACEHOLDER))


def embedding_rows(checkpoint: Checkpoint) -> int:
    """The number of rows of a model's input embeddings (its vocabulary size as the weights see it)."""
    for name, info in checkpoint.tensors.items():
        if module_of(name) in INPUT_EMBEDDINGS and name.endswith(".weight") and len(info.shape) == 2:
            return info.shape[0]
    config = checkpoint.config() or {}
    size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if isinstance(size, int):
        return size
    raise TaskvecError(f"{checkpoint.label}: no input embeddings found (a tensor named like embed_tokens.weight) and "
                       "no vocab_size in config.json; tokenizer_source needs to know the vocabulary's rows")


def read_vocabulary(checkpoint: Checkpoint, rows: int | None = None) -> Vocabulary:
    """The tokens of a model folder's tokenizer by id, for each of its embedding rows."""
    if checkpoint.folder is None or not checkpoint.is_folder:
        raise TaskvecError(f"{checkpoint.label}: tokenizer_source needs every model's tokenizer; give the model's "
                           "folder, not a weights file")
    rows = embedding_rows(checkpoint) if rows is None else rows
    ids, special = _token_ids(checkpoint.folder)
    by_id: list[str | None] = [None] * rows
    for token, i in ids.items():
        if not 0 <= i < rows:
            raise TaskvecError(
                f"{checkpoint.folder}: the tokenizer's token {token!r} has id {i}, but the embeddings have {rows} "
                "rows; resize the embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer))) "
                "and save the model again")
        by_id[i] = token
    return Vocabulary(checkpoint.label, checkpoint.folder,
                      [t if t is not None else f"{PLACEHOLDER}{i}" for i, t in enumerate(by_id)], special)


def _token_ids(folder: Path) -> tuple[dict[str, int], set[str]]:
    """token -> id and the special tokens, from tokenizer.json (any fast tokenizer), else vocab.txt / vocab.json
    plus added_tokens.json, else through transformers (e.g. a SentencePiece model only)."""
    path = folder / "tokenizer.json"
    try:
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            vocab = data["model"].get("vocab") or {}
            ids = dict(vocab) if isinstance(vocab, dict) else {entry[0]: i for i, entry in enumerate(vocab)}
            special = set()
            for added in data.get("added_tokens") or []:
                ids[added["content"]] = added["id"]
                if added.get("special"):
                    special.add(added["content"])
            return ids, special
        ids = None
        if (folder / "vocab.txt").is_file():
            lines = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
            ids = {t: i for i, t in enumerate(lines[:-1] if lines and lines[-1] == "" else lines)}
        elif (folder / "vocab.json").is_file():
            ids = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        if ids is not None:
            if (folder / "added_tokens.json").is_file():
                ids.update(json.loads((folder / "added_tokens.json").read_text(encoding="utf-8")))
            return ids, set()
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise TaskvecError(f"{folder}: unreadable tokenizer files ({e})") from e
    return _token_ids_from_transformers(folder)


def _token_ids_from_transformers(folder: Path) -> tuple[dict[str, int], set[str]]:
    from .io.model_folder import TOKENIZER_FILES

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):  # never a tokenizer found elsewhere
        raise TaskvecError(f"{folder}: has no tokenizer files (tokenizer.json, vocab.txt, tokenizer.model...); "
                           "tokenizer_source needs every model's tokenizer: save it beside the weights")
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise TaskvecError(f"{folder}: its tokenizer has no tokenizer.json or vocab file; reading it needs "
                           "transformers (pip install transformers)") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any failure to load is one clear line
        raise TaskvecError(f"{folder}: no tokenizer could be loaded ({type(e).__name__}: {e}); tokenizer_source "
                           "needs every model's tokenizer files") from e
    return tokenizer.get_vocab(), set(tokenizer.all_special_tokens)


class VocabAlignment:
    """Where each output row comes from in every model; shared by the aligned views and the final patch."""

    def __init__(self, source: str, out: Vocabulary, vocabularies: list[tuple[Checkpoint, Vocabulary]],
                 tensors: set[str], tokenizer_folder: Path | None, temporary=None):
        self.source = source
        self.out = out
        self.rows = len(out.rows)
        self.tensors = tensors  # names of the vocabulary tensors
        self.tokenizer_folder = tokenizer_folder
        self._temporary = temporary
        self.index: dict[int, torch.Tensor] = {}  # id(checkpoint) -> output row -> the model's row, -1 if absent
        present = torch.zeros(self.rows, dtype=torch.int32)
        self.vocabularies = vocabularies
        for checkpoint, vocab in vocabularies:
            where = {t: i for i, t in enumerate(vocab.rows)}
            index = torch.tensor([where.get(t, -1) for t in out.rows], dtype=torch.long)
            self.index[id(checkpoint)] = index
            present += index >= 0
        nowhere = (present == 0).nonzero().flatten()
        if len(nowhere):
            raise TaskvecError(
                f"tokenizer_source {source}: {len(nowhere)} of its tokens are in none of the merged models, e.g. "
                f"{out.rows[int(nowhere[0])]!r}; take the tokenizer of a model that is merged")
        self.partial = (present < len(vocabularies)).nonzero().flatten()  # rows only some models have
        self.position = torch.full((self.rows,), -1, dtype=torch.long)
        self.position[self.partial] = torch.arange(len(self.partial))
        self._fills: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    # ---- what the merge sees

    def wrap(self, checkpoint: Checkpoint) -> Checkpoint:
        return AlignedCheckpoint(checkpoint, self, self.index[id(checkpoint)])

    def fill(self, name: str) -> torch.Tensor:
        """The rows only some models have, in float32: the average of the models that have each."""
        with self._lock:
            if name not in self._fills:
                self._fills[name] = self._average(name)
            return self._fills[name]

    def _average(self, name: str) -> torch.Tensor:
        total, count = None, torch.zeros(len(self.partial))
        for checkpoint, _ in self.vocabularies:
            if name not in checkpoint:
                continue
            index = self.index[id(checkpoint)][self.partial]
            have = index >= 0
            rows = checkpoint.read(name).float()[index[have]]
            if total is None:
                total = torch.zeros((len(self.partial), *rows.shape[1:]))
            total[have] += rows
            count[have] += 1
        return total / count.clamp_min(1).reshape(-1, *([1] * (total.dim() - 1)))

    def patch(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The merged tensor with the rows only some models have set to their average."""
        if name not in self.tensors or not len(self.partial):
            return tensor
        tensor = tensor.clone()
        tensor[self.partial] = self.fill(name).to(tensor.dtype)
        with self._lock:
            self._fills.pop(name, None)
        return tensor

    # ---- what people read

    def summary(self) -> str:
        """One line: the output's rows and, per model, how many of its tokens the output shares."""
        parts = []
        out_tokens = {t for t in self.out.rows if not t.startswith(PLACEHOLDER)}
        for _, vocab in self.vocabularies:
            own = {t for t in vocab.rows if not t.startswith(PLACEHOLDER)}
            parts.append(f"{Path(vocab.label.rstrip('/')).name or vocab.label} {len(own & out_tokens):,}/"
                         f"{len(own):,}")
        return (f"tokenizer_source {self.source}: {self.rows:,} rows ({self.out.tokens:,} tokens); tokens shared "
                f"with the output: {', '.join(parts)}; {len(self.partial):,} rows only some models have (their "
                f"average); vocabulary tensors: {', '.join(sorted(self.tensors))}")

    def config_updates(self) -> dict:
        return {"vocab_size": self.rows}

    def close(self) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None


class AlignedCheckpoint(Checkpoint):
    """A checkpoint whose vocabulary tensors have the output's rows, gathered by token; other tensors as stored.
    A row the model lacks reads as the average of the models that have it (the patch sets it after merging)."""

    def __init__(self, inner: Checkpoint, alignment: VocabAlignment, index: torch.Tensor):
        super().__init__(inner.label, inner.folder, inner.files, inner.is_folder)
        self.inner, self.alignment, self.index = inner, alignment, index
        for name, info in inner.tensors.items():
            if name in alignment.tensors:
                info = TensorInfo(name, info.dtype, (alignment.rows, *info.shape[1:]), info.file, info.offset)
            self.tensors[name] = info

    def read(self, name: str, rows: tuple[int, int] | None = None, into: torch.Tensor | None = None) -> torch.Tensor:
        if name not in self.alignment.tensors:
            return self.inner.read(name, rows, into)
        start, stop = rows or (0, self.alignment.rows)
        index = self.index[start:stop]
        have = index >= 0
        info = self.tensors[name]
        out = torch.empty((stop - start, *info.shape[1:]), dtype=info.dtype)
        if have.any():
            lo, hi = int(index[have].min()), int(index[have].max()) + 1
            out[have] = self.inner.read(name, (lo, hi))[index[have] - lo]
        if not have.all():
            out[~have] = self.alignment.fill(name)[self.alignment.position[start:stop][~have]].to(info.dtype)
        return out

    def config(self) -> dict | None:
        return self.inner.config()

    def close(self) -> None:
        self.inner.close()


def align_vocabularies(source: str, base: Checkpoint | None, inputs: list, search: tuple[Path, ...],
                       opener) -> VocabAlignment | None:
    """The alignment a recipe's ``tokenizer_source`` asks for; None when every model has the same rows (nothing to
    align: the tokenizer files are copied as before)."""
    from .inputs import ModelInput

    models = ([base] if base is not None else []) + [inp.checkpoint for inp in inputs]
    if source == "base" and base is None:
        raise TaskvecError("tokenizer_source base: the recipe has no base_model; name a model or use union")
    try:
        vocabularies = [(c, read_vocabulary(c)) for c in models]
    except TaskvecError:
        if len({_rows_or_none(c) for c in models}) == 1:
            return None  # a model without a tokenizer, embeddings of one size: nothing to align (as before)
        raise
    if all(v.rows == vocabularies[0][1].rows for _, v in vocabularies):
        return None
    for inp in inputs:
        if type(inp) is not ModelInput:
            raise TaskvecError(f"{inp.label}: models with different vocabularies can be aligned only as full models "
                               "(not task vectors or adapters); apply it to its own base first and merge that model")
    temporary, tokenizer_folder = None, None
    if source == "base":
        out = vocabularies[0][1]
    elif source == "union":
        temporary = tempfile.TemporaryDirectory(prefix="taskvec-union-tokenizer-")
        tokenizer_folder = Path(temporary.name)
        out = _union_tokenizer([v for _, v in vocabularies], tokenizer_folder, embedding_rows(models[0]))
    else:
        checkpoint = opener(source, search)
        try:
            out = next((v for c, v in vocabularies if c.folder is not None and checkpoint.folder is not None
                        and c.folder.resolve() == checkpoint.folder.resolve()), None) or read_vocabulary(checkpoint)
            tokenizer_folder = checkpoint.folder
        finally:
            checkpoint.close()
    tensors = _vocabulary_tensors(models, vocabularies)
    return VocabAlignment(source, out, vocabularies, tensors, tokenizer_folder, temporary)


def _rows_or_none(checkpoint: Checkpoint) -> int | None:
    try:
        return embedding_rows(checkpoint)
    except TaskvecError:
        return None


def _vocabulary_tensors(models: list[Checkpoint], vocabularies: list[tuple[Checkpoint, Vocabulary]]) -> set[str]:
    """Tensors named like embeddings or LM heads whose first dimension is each model's row count."""
    names: set[str] = set()
    for checkpoint, vocab in vocabularies:
        for name, info in checkpoint.tensors.items():
            if module_of(name) in ROW_MODULES and info.shape and info.shape[0] == len(vocab.rows):
                names.add(name)
    for checkpoint, vocab in vocabularies:
        for name in names & set(checkpoint.tensors):
            if checkpoint.tensors[name].shape[0] != len(vocab.rows):
                raise TaskvecError(f"{checkpoint.label}: tensor {name!r} has {checkpoint.tensors[name].shape[0]} "
                                   f"rows but the model's embeddings have {len(vocab.rows)}")
    if not names:
        raise TaskvecError(f"{models[0].label}: no embedding or LM-head tensor found to align by token")
    return names


def _union_tokenizer(vocabularies: list[Vocabulary], folder: Path, base_rows: int) -> Vocabulary:
    """The first model's tokenizer plus every other model's tokens it lacks (in order), saved to `folder`."""
    try:
        from tokenizers import AddedToken
        from transformers import AutoTokenizer
    except ImportError as e:
        raise TaskvecError("tokenizer_source union writes a new tokenizer, which needs transformers "
                           "(pip install transformers)") from e
    first = vocabularies[0]
    tokenizer = AutoTokenizer.from_pretrained(first.folder)
    known = set(first.rows)
    new: list[tuple[str, bool]] = []
    for vocab in vocabularies[1:]:
        for token in vocab.rows:
            if token not in known and not token.startswith(PLACEHOLDER):
                known.add(token)
                new.append((token, token in vocab.special))
    for token, special in new:
        _add_token(tokenizer, AddedToken(token, special=special, normalized=not special), special)
    tokenizer.save_pretrained(folder)
    ids, special_tokens = _token_ids(folder)
    rows = max(max(ids.values()) + 1, base_rows)
    by_id: list[str | None] = [None] * rows
    for token, i in ids.items():
        by_id[i] = token
    missing = [t for t, _ in new if t not in ids]
    if missing:
        raise TaskvecError(f"tokenizer_source union: the tokenizer did not take token {missing[0]!r}")
    return Vocabulary("union", folder, [t if t is not None else f"{PLACEHOLDER}{i}" for i, t in enumerate(by_id)],
                      special_tokens)


def _add_token(tokenizer, token, special: bool) -> None:
    """Add one token; a special one also among the tokenizer's extra special tokens (transformers 5's name;
    additional_special_tokens before), so that it stays special when the merged folder is loaded."""
    if not special:
        tokenizer.add_tokens([token])
        return
    key = "extra_special_tokens" if hasattr(tokenizer, "extra_special_tokens") else "additional_special_tokens"
    keep = ("replace_extra_special_tokens" if key == "extra_special_tokens"
            else "replace_additional_special_tokens")
    tokenizer.add_special_tokens({key: [token]}, **{keep: False})
