"""Getting the candidate: its weights as a dict (python tasks), or a transformers model built once from a folder's
config and tokenizer with each candidate's weights loaded into it in memory -- a tuner never writes a folder to
score."""

from pathlib import Path

import torch

from ..errors import TaskvecError


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, through taskvec's own reader."""
    from ..io.checkpoint import open_checkpoint

    ckpt = open_checkpoint(folder)
    try:
        return {name: ckpt.read(name) for name in ckpt.names()}
    finally:
        ckpt.close()


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise TaskvecError(f"{folder}: cannot load a tokenizer ({type(e).__name__}: {e}); "
                           f"the model folder needs its tokenizer files") from e


def build_model(auto_class: str, folder: Path, device: str, where: str):
    """`auto_class` (e.g. AutoModelForCausalLM) from `folder`, in eval mode; the names the folder lacked, and the
    names it had that the model ignores (buffers like ``embeddings.position_ids``, unused poolers)."""
    import transformers

    from transformers.utils import logging

    cls = getattr(transformers, auto_class)
    bar, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()  # a bar per task would bury the results table
    logging.set_verbosity_error()  # an encoder built from a classifier's folder "ignores" its head: expected here
    try:
        model, info = cls.from_pretrained(str(folder), output_loading_info=True)
    except Exception as e:
        raise TaskvecError(f"{where}: {folder} does not load as {auto_class} ({type(e).__name__}: {e})") from e
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()
    return (model.to(device).eval(), set(info.get("missing_keys") or ()),
            set(info.get("unexpected_keys") or ()))


class Models:
    """The transformers models a set of tasks needs, each built once from the folder; a candidate's weights are
    copied into them in place, so scoring many candidates costs no model construction. Tensors a candidate lacks
    keep the folder's values (a merge may leave out what it did not change), even after an earlier candidate set
    them."""

    def __init__(self, folder: Path, device: str):
        self.folder, self.device = folder, device
        self._models: dict[str, tuple] = {}  # auto_class -> (model, originals, loaded version)
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.folder)
        return self._tokenizer

    def get(self, auto_class: str, weights: dict | None, version: int, where: str):
        """The model with `weights` loaded (`version` says which candidate they are: loaded once per version)."""
        if auto_class not in self._models:
            model, missing, ignored = build_model(auto_class, self.folder, self.device, where)
            self._models[auto_class] = [model, {}, None, missing, ignored]
        entry = self._models[auto_class]
        model, originals, loaded, missing, ignored = entry
        if loaded != version:
            given = _load_candidate(model, weights or {}, originals, ignored, where)
            entry[2] = version
            absent = sorted(missing - given)
            if absent and auto_class != "AutoModel":
                raise TaskvecError(f"{where}: {self.folder} lacks {absent[0]} ({len(absent)} tensors missing) for "
                                   f"{auto_class}; give the task a 'head' file or use a folder with its head")
        return model


def _load_candidate(model, weights: dict, originals: dict, ignored: set[str], where: str) -> set[str]:
    """Copy `weights` into `model`, restoring the folder's value of every tensor an earlier candidate set and this
    one lacks. Tensors the model ignored when loading the folder itself are ignored here too. Returns the model's
    names that were given."""
    renamed = model_names(model, weights, where, ignored)
    state = model.state_dict()
    for name in renamed:
        if name not in originals:
            originals[name] = state[name].detach().clone()
    restore = {name: value for name, value in originals.items() if name not in renamed}
    try:
        model.load_state_dict({**restore, **renamed}, strict=False)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise TaskvecError(f"{where}: the weights do not fit the folder's model: {detail}") from e
    return set(renamed)


def model_name(name: str, own: set[str], model) -> str:
    """The model's name for a checkpoint tensor: as is, or with the base model's prefix (``bert.``) removed or added
    so that it is one of the model's names `own`; as is when neither fits."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    if name not in own and name.startswith(prefix) and name[len(prefix):] in own:
        return name[len(prefix):]
    if name not in own and prefix + name in own:
        return prefix + name
    return name


def model_names(model, weights: dict, where: str, ignored: set[str] = frozenset()) -> dict:
    """`weights` under the model's own names (see `model_name`). A name the model has not is an error (the wrong
    folder, most likely), unless the model ignored it in the folder's own checkpoint (`ignored`) or it is a buffer
    the model computes (``embeddings.position_ids``)."""
    own = set(model.state_dict())
    buffers = {name for name, _ in model.named_buffers()}
    renamed = {}
    for name, tensor in weights.items():
        name = model_name(name, own, model)
        if name not in own and (name in ignored or name in buffers):
            continue
        renamed[name] = tensor
    unexpected = sorted(set(renamed) - own)
    if unexpected:
        raise TaskvecError(f"{where}: the weights hold {unexpected[0]!r} ({len(unexpected)} tensors), which the "
                           f"model built from the folder's config has not; is it the right model folder?")
    return renamed
