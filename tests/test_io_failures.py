"""Hostile or broken inputs and a failing disk: every such problem is one TaskvecError naming the file, and a failed
merge leaves neither an output folder nor its hidden temporary folder behind."""

import errno
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_model, run, sentence_transformers_base, ta_recipe, toy_tensors, write_model
from safetensors.torch import save_file

from taskvec import TaskvecError
from taskvec.io import ShardedWriter, open_checkpoint
from taskvec.io import writer as writer_module
from taskvec.io.model_folder import aux_files, copy_aux_files, hub_id, model_card
from taskvec.io.safetensors_file import read_header


def raw_safetensors(path: Path, header: object, data: bytes = b"\0" * 64) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under the folders with a hash of its bytes: inputs must come out of a failed merge unchanged."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_nothing_left(parent: Path, name: str = "out") -> None:
    assert not (parent / name).exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.taskvec-")] == []


def one_error_line(output: str) -> str:
    lines = list(dict.fromkeys(line for line in output.splitlines() if line.strip()))  # the fixture may repeat stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in output, output
    return lines[0]


@pytest.fixture
def models(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0))
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    return base, ft


# --- 1. safetensors headers -------------------------------------------------------------------------------------

F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header,message", [
    ([1, 2], r"not an object"),
    (42, r"not an object"),
    ({"w": [1, 2]}, r"tensor 'w' .*not an object"),
    ({"w": "F32"}, r"tensor 'w' .*not an object"),
    ({"w": {**F32, "dtype": "F99"}}, r"tensor 'w' .*unknown dtype"),
    ({"w": {**F32, "dtype": ["F32"]}}, r"tensor 'w' .*unknown dtype"),
    ({"w": {**F32, "data_offsets": [-8, 0]}}, r"tensor 'w' .*non-negative"),
    ({"w": {**F32, "data_offsets": [8, 0]}}, r"tensor 'w' .*begin after they end"),
    ({"w": {**F32, "data_offsets": [0, 8, 16]}}, r"tensor 'w' .*two non-negative integers"),
    ({"w": {**F32, "data_offsets": [0.0, 8.0]}}, r"tensor 'w' .*non-negative integers"),
    ({"w": {**F32, "data_offsets": None}}, r"tensor 'w' .*data_offsets"),
    ({"w": {**F32, "shape": [2.0]}}, r"tensor 'w' .*shape"),
    ({"w": {**F32, "shape": ["2"]}}, r"tensor 'w' .*shape"),
    ({"w": {**F32, "shape": [True, 2]}}, r"tensor 'w' .*shape"),
    ({"w": {**F32, "shape": [-1, -2]}}, r"tensor 'w' .*shape"),
    ({"w": {**F32, "shape": 2}}, r"tensor 'w' .*shape"),
    ({"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
      "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, r"tensors 'w' and 'v' overlap"),
    ({"w": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}, r"truncated: tensor 'w' ends at byte"),
    ({"__metadata__": ["format", "pt"], "w": F32}, r"__metadata__ must map strings to strings"),
    ({"__metadata__": {"format": 1}, "w": F32}, r"__metadata__ must map strings to strings"),
])
def test_malformed_headers_are_one_clear_error_naming_file_and_tensor(tmp_path, header, message):
    path = raw_safetensors(tmp_path / "bad.safetensors", header)
    with pytest.raises(TaskvecError, match=r"bad\.safetensors: .*" + message):
        read_header(path)


def test_well_formed_headers_still_read(tmp_path):
    header = {"__metadata__": {"format": "pt"}, "a": F32, "b": {"dtype": "I64", "shape": [0], "data_offsets": [8, 8]},
              "c": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]}}
    entries, metadata = read_header(raw_safetensors(tmp_path / "ok.safetensors", header))
    assert metadata == {"format": "pt"} and entries["c"].shape == (2, 2) and entries["b"].nbytes == 0


def test_a_malformed_header_fails_the_cli_with_one_line(tmp_path, models, cli):
    base, ft = models
    raw_safetensors(ft / "model.safetensors", {"w": {**F32, "data_offsets": [8, 0]}})
    code, output = cli("apply", base, ft, "--out", tmp_path / "out", "--quiet", ok=False)
    line = one_error_line(output)
    assert code == 2 and "model.safetensors" in line and "'w'" in line
    assert_nothing_left(tmp_path)


# --- 2. shard indexes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shard", ["../model-00001-of-00002.safetensors", "sub/model.safetensors",
                                   "sub\\model.safetensors", "/etc/model.safetensors", "..", ".", ""])
def test_index_entries_outside_the_folder_are_refused(tmp_path, shard):
    folder = write_model(tmp_path / "m", toy_tensors(0), shards=2)
    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    weight_map["layers.0.w"] = shard
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(TaskvecError, match=r"model\.safetensors\.index\.json: tensor 'layers\.0\.w' points to .*"
                                           r"a shard must be a file name beside the index"):
        open_checkpoint(folder)


@pytest.mark.parametrize("weight_map", [["model.safetensors"], {"w": 3}, {"w": None}, "model.safetensors"])
def test_index_weight_map_must_map_names_to_files(tmp_path, weight_map):
    folder = write_model(tmp_path / "m", toy_tensors(0))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(TaskvecError, match=r"model\.safetensors\.index\.json: not a valid shard index"):
        open_checkpoint(folder)


# --- 3. I/O failures --------------------------------------------------------------------------------------------

def fail_after(real, calls: int, err: OSError, only=lambda *a: True):
    """`real`, except that after `calls` successful calls (counting those `only` accepts) it raises `err`."""
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        if only(*args):
            count["n"] += 1
            if count["n"] > calls:
                raise err
        return real(*args, **kwargs)

    return wrapper


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("calls", [0, 1, 3])
def test_disk_full_while_writing_shards_is_one_error_and_leaves_nothing(tmp_path, models, monkeypatch, calls):
    base, ft = models
    before = snapshot(base, ft)
    monkeypatch.setattr(os, "pwrite", fail_after(os.pwrite, calls, NO_SPACE))
    with pytest.raises(TaskvecError, match=r"out/model-\d+-of-\d+\.safetensors: cannot write \(No space left on "
                                           r"device\); free some space or choose another output folder"):
        run(ta_recipe(base, ft), tmp_path / "out", shard_size=100, workers=2)
    assert_nothing_left(tmp_path)
    assert snapshot(base, ft) == before


def test_disk_full_fails_the_cli_with_one_line(tmp_path, models, monkeypatch, cli):
    base, ft = models
    before = snapshot(base, ft)
    monkeypatch.setattr(os, "pwrite", fail_after(os.pwrite, 2, NO_SPACE))
    code, output = cli("apply", base, ft, "--out", tmp_path / "out", "--quiet", ok=False)
    line = one_error_line(output)
    assert code == 2 and "model.safetensors" in line and "No space left on device" in line
    assert_nothing_left(tmp_path)
    assert snapshot(base, ft) == before


def test_fsync_failure_of_a_shard_is_reported(tmp_path, models, monkeypatch, cli):
    base, ft = models
    monkeypatch.setattr(os, "fsync", fail_after(os.fsync, 0, OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
                                                only=lambda fd: fd_path(fd).endswith(".safetensors")))
    code, output = cli("apply", base, ft, "--out", tmp_path / "out", "--quiet", ok=False)
    line = one_error_line(output)
    assert code == 2 and "out/model.safetensors: cannot write (Disk quota exceeded)" in line
    assert_nothing_left(tmp_path)


def test_fsync_failure_of_a_small_file_is_reported(tmp_path, models, monkeypatch):
    base, ft = models
    monkeypatch.setattr(os, "fsync", fail_after(os.fsync, 0, OSError(errno.EIO, os.strerror(errno.EIO)),
                                                only=lambda fd: fd_path(fd).endswith("config.json")))
    with pytest.raises(TaskvecError, match=r"out/config\.json: cannot write \(Input/output error\)"):
        run(ta_recipe(base, ft), tmp_path / "out")
    assert_nothing_left(tmp_path)


def test_permission_denied_copying_the_config_is_reported(tmp_path, models, monkeypatch, cli):
    base, ft = models
    (base / "tokenizer.json").write_text("{}")
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(shutil, "copy2", fail_after(shutil.copy2, 0, denied))
    code, output = cli("apply", base, ft, "--out", tmp_path / "out", "--quiet", ok=False)
    line = one_error_line(output)
    assert code == 2 and "cannot write (Permission denied); choose an output folder you can write to" in line
    assert "config.json" in line or "tokenizer.json" in line
    assert_nothing_left(tmp_path)


def test_a_read_only_output_parent_is_reported(tmp_path, models, monkeypatch):
    base, ft = models
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if ".taskvec-tmp-" in self.name:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(TaskvecError, match=r"out: cannot write \(Read-only file system\)"):
        run(ta_recipe(base, ft), tmp_path / "out")
    assert_nothing_left(tmp_path)


def test_a_failed_final_rename_is_reported_and_cleaned_up(tmp_path, models, monkeypatch):
    base, ft = models
    monkeypatch.setattr(os, "rename", fail_after(os.rename, 0, OSError(errno.EACCES, os.strerror(errno.EACCES))))
    with pytest.raises(TaskvecError, match=r"out: cannot write \(Permission denied\)"):
        run(ta_recipe(base, ft), tmp_path / "out")
    assert_nothing_left(tmp_path)


def test_a_read_error_in_an_input_is_reported(tmp_path, models, monkeypatch, cli):
    base, ft = models
    before = snapshot(base, ft)
    monkeypatch.setattr(os, "preadv", fail_after(os.preadv, 1, OSError(errno.EIO, os.strerror(errno.EIO))))
    code, output = cli("apply", base, ft, "--out", tmp_path / "out", "--quiet", ok=False)
    line = one_error_line(output)
    assert code == 2 and "model.safetensors: cannot read (Input/output error)" in line
    assert "changed or was removed during the merge" in line
    assert_nothing_left(tmp_path)
    assert snapshot(base, ft) == before


def test_a_read_error_through_the_api_names_the_input(tmp_path, models, monkeypatch):
    base, ft = models
    monkeypatch.setattr(os, "preadv", fail_after(os.preadv, 0, OSError(errno.EIO, os.strerror(errno.EIO))))
    with pytest.raises(TaskvecError, match=r"(base|ft)/model\.safetensors: cannot read \(Input/output error\)"):
        run(ta_recipe(base, ft), tmp_path / "out", workers=1)
    assert_nothing_left(tmp_path)


def test_an_input_removed_after_opening_is_reported(tmp_path):
    ckpt = open_checkpoint(write_model(tmp_path / "m", toy_tensors(0)))
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(TaskvecError, match=r"m/model\.safetensors: cannot read \(No such file or directory\)"):
        ckpt.read("layers.0.w")


# --- 4. durability ----------------------------------------------------------------------------------------------

def test_every_output_file_and_folder_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    base = sentence_transformers_base(tmp_path / "base")
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(fd_path(fd))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run(ta_recipe(base, ft, out_dtype="bfloat16"), tmp_path / "out", shard_size=100)
    out = tmp_path / "out"
    tmp = {Path(p).relative_to(tmp_path).parts[0] for p in synced if ".out.taskvec-tmp-" in p}
    assert len(tmp) == 1, synced
    folder = tmp_path / tmp.pop()
    synced_rel = {str(Path(p).relative_to(folder)) for p in synced if ".out.taskvec-tmp-" in p}
    written = {str(p.relative_to(out)) for p in out.rglob("*")}
    assert {"README.md", "config.json", "tokenizer.json", "model.safetensors.index.json",
            "1_Pooling/config.json", "1_Pooling"} <= written
    assert written | {"."} <= synced_rel


# --- 5. atomic replacement --------------------------------------------------------------------------------------

class Crash(BaseException):
    """The process dying at this point."""


def folders(tmp_path):
    old = tmp_path / "out"
    old.mkdir()
    (old / "old.txt").write_text("old")
    new = tmp_path / ".out.taskvec-tmp-test"
    new.mkdir()
    (new / "new.txt").write_text("new")
    return new, old


def needs_exchange(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    works = writer_module._exchange(a, b)
    a.rmdir(), b.rmdir()
    if not works:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")


def test_force_swaps_the_folders_atomically(tmp_path, models, monkeypatch):
    needs_exchange(tmp_path)
    base, ft = models
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    swaps = []
    real = writer_module._exchange

    def exchange(a, b):
        swaps.append((a.name, b.name))
        return real(a, b)

    monkeypatch.setattr(writer_module, "_exchange", exchange)
    run(ta_recipe(base, ft), tmp_path / "out", force=True)
    assert len(swaps) == 1 and swaps[0][0].startswith(".out.taskvec-tmp-") and swaps[0][1] == "out"
    assert not (tmp_path / "out" / "old.txt").exists() and set(read_model(tmp_path / "out")) == set(toy_tensors(0))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_crash_right_after_the_exchange_leaves_the_new_folder(tmp_path, monkeypatch):
    needs_exchange(tmp_path)
    new, old = folders(tmp_path)

    def crash(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(Crash):
        writer_module.move_into_place(new, old, force=True)
    assert (old / "new.txt").read_text() == "new" and not (old / "old.txt").exists()
    assert (new / "old.txt").exists()  # the old folder, hidden, is what a crash here leaves behind


def test_a_crash_before_the_exchange_leaves_the_old_folder(tmp_path, monkeypatch):
    new, old = folders(tmp_path)

    def crash(a, b):
        raise Crash

    monkeypatch.setattr(writer_module, "_exchange", crash)
    with pytest.raises(Crash):
        writer_module.move_into_place(new, old, force=True)
    assert (old / "old.txt").read_text() == "old" and not (old / "new.txt").exists()


def test_without_the_exchange_two_renames_still_replace_the_folder(tmp_path, monkeypatch):
    new, old = folders(tmp_path)
    monkeypatch.setattr(writer_module, "_exchange", lambda a, b: False)
    writer_module.move_into_place(new, old, force=True)
    assert (old / "new.txt").exists() and not (old / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_without_renameat2_in_libc_the_fallback_is_used(tmp_path, monkeypatch):
    new, old = folders(tmp_path)
    monkeypatch.setattr(writer_module, "_renameat2", lambda: None)
    writer_module.move_into_place(new, old, force=True)
    assert (old / "new.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    new, old = folders(tmp_path)
    monkeypatch.setattr(writer_module, "_exchange", lambda a, b: False)
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: (_ for _ in ()).throw(Crash) if Path(a) == new else real(a, b))
    with pytest.raises(Crash):
        writer_module.move_into_place(new, old, force=True)
    assert (old / "old.txt").read_text() == "old"


def test_a_writer_commit_over_an_existing_folder_with_force(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "stale.txt").write_text("x")
    with ShardedWriter(tmp_path / "o", [("a", torch.float32, (2,))], force=True) as w:
        w.write("a", torch.ones(2))
        w.write_text("notes/readme.txt", "hi")
        w.commit()
    assert sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*")) == [
        "model.safetensors", "notes", "notes/readme.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


# --- 6. the files copied beside the weights ---------------------------------------------------------------------

def busy_folder(tmp_path):
    """A loose weights file in a work folder full of unrelated things, with the model's config beside it."""
    busy = tmp_path / "busy"
    busy.mkdir()
    save_file(toy_tensors(0), busy / "base.safetensors")
    (busy / "config.json").write_text(json.dumps({"model_type": "toy"}))
    (busy / "tokenizer.json").write_text("{}")
    (busy / "random.csv").write_text("a,b\n1,2\n")
    (busy / "other_project").mkdir()
    (busy / "other_project" / "huge_notes.txt").write_text("private notes")
    (busy / ".git").mkdir()
    (busy / ".git" / "config").write_text("[core]")
    return busy


def test_a_loose_weights_file_brings_only_the_standard_model_files(tmp_path):
    busy = busy_folder(tmp_path)
    ckpt = open_checkpoint(busy / "base.safetensors")
    assert not ckpt.is_folder and open_checkpoint(write_model(tmp_path / "m", toy_tensors(0))).is_folder
    with ShardedWriter(tmp_path / "out", [("a", torch.float32, (1,))]) as w:
        copy_aux_files(w, ckpt)
        w.write("a", torch.zeros(1))
        w.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors",
                                                                    "tokenizer.json"]


def test_a_merge_onto_a_loose_weights_file_copies_none_of_its_neighbours(tmp_path):
    busy = busy_folder(tmp_path)
    ft = write_model(tmp_path / "ft", toy_tensors(1))
    run(ta_recipe(busy / "base.safetensors", ft), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                                    "tokenizer.json"]


def test_only_subfolders_that_modules_json_lists_are_copied(tmp_path):
    folder = write_model(tmp_path / "st", toy_tensors(0))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "../outside", "type": "x"},
        {"idx": 3, "name": "3", "path": "/etc", "type": "x"},
    ]))
    for sub in ("1_Pooling", "checkpoints", ".cache"):
        (folder / sub).mkdir()
        (folder / sub / "config.json").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("x")
    (folder / "notes.md").write_text("kept: a model folder's own files are the model's")
    names = {p.relative_to(folder).as_posix() for p in aux_files(folder)}
    assert names == {"config.json", "modules.json", "notes.md", "1_Pooling/config.json"}
    assert {p.relative_to(folder).as_posix() for p in aux_files(folder, is_folder=False)} == {
        "config.json", "modules.json", "1_Pooling/config.json"}


# --- 7. the model card ------------------------------------------------------------------------------------------

def card_meta(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_a_card_from_local_paths_shows_no_absolute_path(tmp_path, models):
    base, ft = models
    run(ta_recipe(base, ft), tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in card and "/tmp" not in card
    assert "base_model" not in card_meta(card) and "base_model_relation" not in card_meta(card)
    assert card_meta(card)["tags"] == ["taskvec", "merge", "task_arithmetic"]
    assert "- `base` (local)" in card and "- `ft` (local)" in card
    assert "base_model: base" in card and "model: ft" in card  # the recipe, relative to the output's parent


def test_an_apply_card_has_no_expression_or_path_in_base_model(tmp_path, models, cli):
    base, ft = models
    cli("apply", base, f"{ft}:0.5", "--out", tmp_path / "out", "--quiet")
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(tmp_path) not in card and "base_model" not in card_meta(card)
    assert "(ft - base)" in card


def test_a_card_cites_the_hub_id_a_local_config_names(tmp_path):
    base = write_model(tmp_path / "base", toy_tensors(0), config={"_name_or_path": "HuggingFaceTB/SmolLM2-135M"})
    ft = write_model(tmp_path / "ft", toy_tensors(1), config={"_name_or_path": "/home/alice/runs/checkpoint-500"})
    run(ta_recipe(base, ft), tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    meta = card_meta(card)
    assert meta["base_model"] == ["HuggingFaceTB/SmolLM2-135M"] and meta["base_model_relation"] == "merge"
    assert "alice" not in card and str(tmp_path) not in card


def test_model_card_takes_refs_with_their_configs(tmp_path):
    card = model_card([("acme/tiny", None), (str(tmp_path / "ft"), {"_name_or_path": "org/base-1.5B"}),
                       (str(tmp_path / "x" / "vec"), None)], "ties",
                      f"base_model: acme/tiny\nmodels:\n- model: {tmp_path}/ft\n- model: /home/bob/vec\n",
                      out=tmp_path / "out")
    assert card_meta(card)["base_model"] == ["acme/tiny", "org/base-1.5B"]
    assert "- model: ft\n" in card and "- model: vec\n" in card and "/home" not in card
    assert "[`acme/tiny`](https://huggingface.co/acme/tiny)" in card


@pytest.mark.parametrize("ref,config,expected", [
    ("HuggingFaceTB/SmolLM2-135M", None, "HuggingFaceTB/SmolLM2-135M"),
    ("/models/base", {"_name_or_path": "meta-llama/Llama-3.2-1B"}, "meta-llama/Llama-3.2-1B"),
    ("/models/base", {"_name_or_path": "/models/base"}, None),
    ("./org/name", None, None),
    ("base", {"_name_or_path": "../org/name"}, None),
    ("a/../b", None, None),
    ("base", None, None),
    ("base", {"_name_or_path": 3}, None),
])
def test_hub_id(ref, config, expected):
    assert hub_id(ref, config) == expected


def test_hub_id_is_not_an_existing_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert hub_id("org/name", None) is None and hub_id("org/other", None) == "org/other"
