"""Getting the candidate: its weights as a dict (python tasks), or a transformers model built from a folder's config
and tokenizer with the candidate's weights loaded into it in memory -- a tuner never writes a folder to score."""

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


def load_model(auto_class: str, folder: Path, weights: dict | None, device: str, where: str):
    """`auto_class` (e.g. AutoModelForCausalLM) from `folder`, then `weights` over it when given; in eval mode."""
    import transformers

    from transformers.utils import logging

    cls = getattr(transformers, auto_class)
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a bar per task would bury the results table
    try:
        model, info = cls.from_pretrained(str(folder), output_loading_info=True)
    except Exception as e:
        raise TaskvecError(f"{where}: {folder} does not load as {auto_class} ({type(e).__name__}: {e})") from e
    finally:
        if bar:
            logging.enable_progress_bar()
    given = load_weights(model, weights, where) if weights is not None else set()
    missing = sorted(set(info.get("missing_keys") or ()) - given)
    if missing and auto_class != "AutoModel":
        raise TaskvecError(f"{where}: {folder} lacks {missing[0]} ({len(missing)} tensors missing) for "
                           f"{auto_class}; give the task a 'head' file or use a folder with its head")
    return model.to(device).eval()


def model_name(name: str, own: set[str], model) -> str:
    """The model's name for a checkpoint tensor: as is, or with the base model's prefix (``bert.``) removed or added
    so that it is one of the model's names `own`; as is when neither fits."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    if name not in own and name.startswith(prefix) and name[len(prefix):] in own:
        return name[len(prefix):]
    if name not in own and prefix + name in own:
        return prefix + name
    return name


def load_weights(model, weights: dict, where: str) -> set[str]:
    """Copy `weights` into `model`. Names as saved on disk may carry the base model's prefix (``bert.``) or lack it;
    tensors the dict lacks keep the folder's values (a merge may leave out what it did not change). Returns the
    model's names that were given."""
    own = set(model.state_dict())
    renamed = {model_name(name, own, model): tensor for name, tensor in weights.items()}
    unexpected = sorted(set(renamed) - own)
    if unexpected:
        raise TaskvecError(f"{where}: the weights hold {unexpected[0]!r} ({len(unexpected)} tensors), which the "
                           f"model built from the folder's config has not; is it the right model folder?")
    try:
        model.load_state_dict(renamed, strict=False)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise TaskvecError(f"{where}: the weights do not fit the folder's model: {detail}") from e
    return set(renamed)
