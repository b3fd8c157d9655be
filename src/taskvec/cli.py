"""The ``taskvec`` command: a thin layer over the Python API.

Only typer, rich and taskvec's light modules load at start: ``--help``, ``version`` and argument errors answer at
once. Whatever imports torch, numba or matplotlib is imported inside the command that needs it.
"""

import sys
import warnings
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .errors import TaskvecError

try:  # recent typer carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

if TYPE_CHECKING:
    from .merge import MergeOptions, MergeResult

err = Console(stderr=True)


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


warnings.formatwarning = _one_line_warning


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as one ``error:`` line; the caller raises the result (exit status `code`)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def one_line_usage_errors():
    """A usage error (unknown command or option, missing argument) as one ``error:`` line that says where help is,
    instead of typer's usage box. Calling ``taskvec`` with nothing still shows the help."""
    try:
        yield
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            raise
        message, ctx = e.format_message().rstrip(), getattr(e, "ctx", None)
        if ctx is not None:
            message += ("" if message.endswith((".", "?")) else ".") + f" See '{ctx.command_path} --help'."
        raise fail(message, e.exit_code) from None


class QuickHelpOption:
    """typer (0.29) coerces an absent --help flag (value None) through a pydantic validator it builds on the spot,
    which imports pydantic (~0.15 s) on every run; a False default is a plain bool, which it lets through."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False
        return option


class Command(QuickHelpOption, TyperCommand):
    """One taskvec command."""


class Commands(QuickHelpOption, TyperGroup):
    """taskvec's command group: typer's, with one-line usage errors that name the commands."""

    def make_context(self, *args, **kwargs):
        with one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with one_line_usage_errors():
            return super().invoke(ctx)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except ClickException as e:
            if e.message.startswith("No such command"):
                e.message = f"{e.message} The commands are: {', '.join(self.list_commands(ctx))}."
            raise


app = typer.Typer(name="taskvec", cls=Commands, add_completion=False, no_args_is_help=True,
                  help="Model merging with task vectors, streamed tensor by tensor.")


def os_error_message(e: OSError) -> str:
    """``<filename>: <strerror>``, the way the shell reports a file problem; the bare message when there is none."""
    what = e.strerror or str(e) or type(e).__name__
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    return ": ".join([" -> ".join(names), what] if names else [what])


def friendly(fn):
    """Turn problems a user can act on into one line and exit status 2 -- TaskvecError, and as a safety net any
    OSError (disk full, permission denied) or MemoryError that gets this far -- and Ctrl-C into status 130 (nothing
    is left half-written). Anything else is a bug in taskvec: it keeps its traceback."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TaskvecError as e:
            raise fail(str(e)) from None
        except BrokenPipeError:  # `taskvec methods | head`: typer exits quietly
            raise
        except OSError as e:
            raise fail(os_error_message(e)) from None
        except MemoryError:
            raise fail("out of memory") from None
        except KeyboardInterrupt:
            err.print("interrupted: no output was written")
            raise typer.Exit(130)
    return wrapper


ShardSize = Annotated[str, typer.Option("--shard-size", help="largest output shard, e.g. 5GB, 500MB, 2GiB")]
Workers = Annotated[Optional[int], typer.Option("--workers", "-j", help="worker threads (default: min(4, cores))")]
Device = Annotated[str, typer.Option("--device", help="where the math runs: cpu, cuda, cuda:1")]
ComputeDtype = Annotated[str, typer.Option("--compute-dtype", help="dtype of the math (float32 unless speed matters more)")]
Force = Annotated[bool, typer.Option("--force", help="replace the output folder if it exists")]
Carry = Annotated[bool, typer.Option("--carry-missing", help="copy tensors only some models have, instead of failing")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]
Seed = Annotated[int, typer.Option("--seed", help="seed of the random drops (dare_*, della*): same seed, same output")]
ForceBase = Annotated[bool, typer.Option("--force-base", help="add stored task vectors to a model that is "
                                              "not their base (e.g. fine-tuned from it): warn instead of refusing")]


def _options(shard_size, workers, device, compute_dtype, force, carry, quiet, seed=0,
             force_base=False) -> "MergeOptions":
    from .dtypes import parse_dtype
    from .io.writer import parse_size
    from .merge import MergeOptions

    if workers is not None and workers < 1:
        raise TaskvecError("--workers must be at least 1")
    return MergeOptions(
        shard_size=parse_size(shard_size), workers=workers, device=device,
        compute_dtype=parse_dtype(compute_dtype, "--compute-dtype"), on_missing="carry" if carry else "error",
        force=force, progress=not quiet, seed=seed, force_base=force_base,
    )


def _summary(result: "MergeResult", quiet: bool) -> None:
    s = result.stats
    if not quiet:
        rate = s.bytes_read / max(s.seconds, 1e-9) / 1e6
        err.print(
            f"wrote {result.path}: {s.tensors} tensors, {s.bytes_written / 1e6:,.1f} MB, read {s.bytes_read / 1e6:,.1f} MB "
            f"in {s.seconds:.1f} s ({rate:,.0f} MB/s)", highlight=False,
        )
        if result.vocabulary:
            err.print(f"vocabulary: {result.vocabulary}", highlight=False)


@app.command(cls=Command)
@friendly
def merge(
    recipe: Annotated[Path, typer.Argument(help="mergekit-style YAML recipe")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output model folder")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (per tensor: path, shape, dtypes, "
                                          "each model's parameters; bytes and peak memory) and write nothing")] = False,
    shard_size: ShardSize = "5GB", workers: Workers = None, device: Device = "cpu",
    compute_dtype: ComputeDtype = "float32", force: Force = False, carry_missing: Carry = False, quiet: Quiet = False,
    seed: Seed = 0, force_base: ForceBase = False,
    out_format: Annotated[str, typer.Option("--out-format", help="model (a Hugging Face folder) or lora (a PEFT "
                                            "adapter of base_model: give --rank or --energy)")] = "model",
    rank: Annotated[Optional[int], typer.Option("--rank", help="--out-format lora: the LoRA rank")] = None,
    energy: Annotated[Optional[float], typer.Option("--energy", help="--out-format lora: per matrix, the rank "
                                                    "holding this share of the energy")] = None,
    architecture: Annotated[Optional[str], typer.Option(
        "--architecture", help="the transformers class the output loads as (e.g. LlamaForSequenceClassification): "
                               "config.json from the merged model whose config lists it")] = None,
):
    """Run a recipe (merge_method, base_model, models, parameters) and write a Hugging Face model folder."""
    options = _options(shard_size, workers, device, compute_dtype, force, carry_missing, quiet, seed, force_base)
    if out_format not in ("model", "lora"):
        raise TaskvecError(f"merge: --out-format is model or lora, got {out_format!r}")
    if out_format == "lora" and out is not None and not dry_run:
        from .lora_export import energy_summary, merge_as_lora

        print(energy_summary(merge_as_lora(recipe, out, options, rank=rank, energy=energy)))
        return
    if dry_run:
        from .merge import describe_views

        for title, view in describe_views(recipe, options):
            if title:
                Console().print(title, highlight=False)
            _print_plan(view)
        return
    if out is None:
        raise TaskvecError("merge: give the output folder with --out DIR (or --dry-run to only print the plan)")
    from .merge import merge_recipe

    _summary(merge_recipe(recipe, out, options, architecture=architecture), quiet)


def _print_plan(view) -> None:
    from rich.table import Table

    console = Console()
    table = Table(title="plan", title_justify="left")
    for i, col in enumerate(view.columns):  # tensor names may fold; numbers never
        widest = max([len(row[i]) for row in view.rows] + [len(col)])
        table.add_column(col, overflow="fold", no_wrap=i > 0, min_width=min(widest, 24) if i == 0 else widest)
    for row in view.rows:
        table.add_row(*row)
    console.print(table)
    for i, label in enumerate(view.models):
        console.print(f"m{i + 1} = {label} ({view.model_columns})", highlight=False)
    for key, value in view.totals.items():
        shown = f"{value / 1e6:,.1f} MB" if key.endswith(("bytes", "(estimate)")) else value
        console.print(f"{key}: {shown}", highlight=False)


def parse_scaled(arg: str) -> tuple[str, float]:
    """``path:0.5`` -> (path, 0.5); a path without a numeric suffix has scale 1."""
    path, sep, scale = arg.rpartition(":")
    if sep:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return arg, 1.0


@app.command(cls=Command)
@friendly
def apply(
    base: Annotated[str, typer.Argument(help="base model folder, file or cached model id")],
    vectors: Annotated[list[str], typer.Argument(help="task vectors, PEFT LoRA adapters or fine-tuned models, each as "
                                                 "PATH or PATH:SCALE")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output model folder")],
    out_dtype: Annotated[Optional[str], typer.Option("--out-dtype", help="dtype of the saved floats")] = None,
    shard_size: ShardSize = "5GB", workers: Workers = None, device: Device = "cpu",
    compute_dtype: ComputeDtype = "float32", force: Force = False, carry_missing: Carry = False, quiet: Quiet = False,
    force_base: ForceBase = False,
):
    """Task arithmetic, short form: BASE + sum of SCALE * task vector (a fine-tuned model counts as its own vector)."""
    from .adapter import is_adapter
    from .inputs import is_task_vector
    from .vector import TaskVector

    options = _options(shard_size, workers, device, compute_dtype, force, carry_missing, quiet, 0, force_base)
    total = None
    for arg in vectors:
        path, scale = parse_scaled(arg)
        if is_task_vector(path):
            tv = TaskVector.load(path)
        elif is_adapter(path):
            tv = TaskVector.from_adapter(path, base)
        else:
            tv = TaskVector.from_models(base, path)
        total = scale * tv if total is None else total + scale * tv
    _summary(total.apply(base, out, out_dtype=out_dtype, options=options), quiet)


@app.command(cls=Command)
@friendly
def extract(
    base: Annotated[str, typer.Option("--base", help="the model that was fine-tuned")],
    finetuned: Annotated[str, typer.Option("--finetuned", help="the fine-tuned model")],
    out: Annotated[Path, typer.Option("--out", "-o", help="task vector folder to write")],
    dtype: Annotated[str, typer.Option("--dtype", help="storage dtype of the deltas (float32 is exact)")] = "float32",
    compress: Annotated[Optional[str], typer.Option("--compress", help="dense-bf16, sparse:DENSITY, lowrank:RANK, "
                                                    "lowrank-energy:E or sign (sign:tensor)")] = None,
    shard_size: ShardSize = "5GB", workers: Workers = None, force: Force = False, quiet: Quiet = False,
):
    """Store tau = finetuned - base as safetensors plus a taskvec.json manifest (optionally compressed)."""
    if compress is not None:
        from .store.codecs import parse

        parse(compress)  # a bad spec fails before anything is read
    from .vector import TaskVector

    options = _options(shard_size, workers, "cpu", "float32", force, False, quiet)
    path = TaskVector.from_models(base, finetuned).save(out, dtype=dtype, compress=compress, options=options)
    if compress is not None:
        import json

        r = json.loads((path / "taskvec.json").read_text())["compression_report"]
        worst = r["worst_tensor"] or {}
        print(f"{r['compression']}: {r['stored_bytes'] / 1e6:,.2f} MB stored vs {r['dense_float32_bytes'] / 1e6:,.2f} "
              f"MB dense float32 ({100 * (r['size_ratio'] or 0):.1f}%), relative error ||tau - decoded|| / ||tau|| = "
              f"{r['relative_error']:.4g} (worst tensor {worst.get('tensor')!r}: {worst.get('relative_error', 0):.4g}; "
              f"{r['encoded_tensors']} encoded, {r['dense_tensors']} dense)")
    if not quiet:
        err.print(f"wrote task vector {path}", highlight=False)


@app.command("extract-lora", cls=Command)
@friendly
def extract_lora_command(
    base: Annotated[str, typer.Option("--base", help="the model that was fine-tuned")],
    finetuned: Annotated[str, typer.Option("--finetuned", help="the fine-tuned model")],
    out: Annotated[Path, typer.Option("--out", "-o", help="adapter folder to write (PEFT's layout)")],
    rank: Annotated[Optional[int], typer.Option("--rank", help="the LoRA rank of every matrix")] = None,
    energy: Annotated[Optional[float], typer.Option("--energy", help="per matrix, the smallest rank holding this "
                                                    "share of its squared singular values, e.g. 0.9")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="dtype of the saved factors and tensors")] = "float32",
    lora_embeddings: Annotated[bool, typer.Option("--lora-embeddings", help="LoRA on embeddings too, instead of "
                                                  "saving them whole (smaller)")] = False,
    force: Force = False, quiet: Quiet = False,
):
    """Write finetuned - base as a PEFT LoRA adapter: truncated SVD per matrix; other changed tensors saved whole."""
    from .dtypes import parse_dtype
    from .lora_export import energy_summary, extract_lora

    export = extract_lora(base, finetuned, out, rank=rank, energy=energy, dtype=parse_dtype(dtype, "--dtype"),
                          force=force, lora_embeddings=lora_embeddings,
                          log=None if quiet else (lambda line: err.print(line, highlight=False)))
    print(energy_summary(export))


@app.command("fingerprint", cls=Command)
@friendly
def fingerprint_command(
    model: Annotated[str, typer.Argument(help="model folder, .safetensors/.bin file, shard index or cached model id")],
    as_json: Annotated[bool, typer.Option("--json", help="print the per-tensor hashes too, as JSON")] = False,
):
    """Print a model's fingerprint: sha256 per tensor (name, dtype, shape, bytes), one Merkle root, any sharding."""
    from .store.fingerprint import fingerprint_model

    fp = fingerprint_model(model)
    if as_json:
        import json

        print(json.dumps({"model": model, **fp.to_dict()}, indent=2))
    else:
        print(fp.root)


@app.command("inspect", cls=Command)
@friendly
def inspect_command(
    vectors: Annotated[list[str], typer.Argument(help="fine-tuned models (need --base) and/or stored task vectors")],
    base: Annotated[Optional[str], typer.Option("--base", help="the model the fine-tuned models started from")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="report folder: report.json, report.html, PNGs")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="an entry counts as changed if |delta| > this")] = 0.0,
    density: Annotated[float, typer.Option("--density", help="TIES' per-tensor trim density for the drop estimate")] = 0.2,
    force: Force = False, quiet: Quiet = False,
):
    """Norms, top-k overlap, sign conflicts and TIES' losses of task vectors: see interference before merging."""
    from .inspect import inspect_vectors
    from .inspect.report import rich_table, settings_line, tables
    from .io.writer import prepare_target

    if out is not None:
        prepare_target(out, force)  # fail now, not after reading every input
        _refuse_overwriting_inputs(out, [Path(p) for p in vectors + ([base] if base else [])])
    report = inspect_vectors(vectors, base, tolerance=tolerance, density=density, progress=not quiet)
    console = Console()
    for t in tables(report):
        console.print(rich_table(t, console.width))
    console.print(settings_line(report), highlight=False)
    if out is not None:
        err.print(f"wrote report {report.save(out, force)}", highlight=False)


def _refuse_overwriting_inputs(out: Path, paths: list[Path]) -> None:
    """--force replaces the report folder: never let that be (or contain) an input."""
    target = out.resolve()
    for p in paths:
        if p.exists() and (target == p.resolve() or target in p.resolve().parents):
            raise TaskvecError(f"{out}: is an input or contains one; write the report somewhere else")


@app.command("eval", cls=Command)
@friendly
def eval_command(
    model: Annotated[Path, typer.Argument(help="model folder to score")],
    tasks: Annotated[Path, typer.Option("--tasks", "-t", help="tasks file (YAML): python, classification, "
                                        "language_modeling tasks")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the results as JSON here")] = None,
    device: Annotated[str, typer.Option("--device", help="where the model runs: cpu, cuda, cuda:1")] = "cpu",
):
    """Score a model folder on the tasks of a tasks file; print task, metric, score and normalized score."""
    from .evaluate import evaluate, load_tasks, summary

    task_list = load_tasks(tasks)  # a bad tasks file fails here, before any model loads
    results = evaluate(model, task_list, device=device)
    _print_results(results, summary(results))
    if json_out is not None:
        _write_json(json_out, {
            "model": str(model), "tasks_file": str(tasks), "device": device,
            "results": [r.to_dict() for r in results], "summary": summary(results),
        })
        err.print(f"wrote {json_out}", highlight=False)


@app.command("tune", cls=Command)
@friendly
def tune_command(
    recipe: Annotated[Path, typer.Argument(help="recipe whose values may be {search: \\[lo, hi]} or "
                                           "{choices: \\[...]}")],
    tasks: Annotated[Path, typer.Option("--tasks", "-t", help="tasks file (YAML) that scores the candidates")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where the best recipe goes (YAML); its trace, plot and "
                                      "study sit beside it")],
    search: Annotated[str, typer.Option("--search", help="grid, tpe or cmaes")] = "tpe",
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", help="candidates to try (tpe, cmaes; default "
                                                  "30); a grid tries all of its points")] = None,
    grid_points: Annotated[int, typer.Option("--grid-points", help="points per searched range in a grid")] = 5,
    merge_out: Annotated[Optional[Path], typer.Option("--merge", help="also write the best merge here")] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", help="score candidates on K Ray workers")] = 1,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="a running Ray cluster "
                                                       "(default: a local Ray when --workers > 1)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="seed of the sampler")] = 0,
    device: Annotated[str, typer.Option("--device", help="where candidates are scored: cpu, cuda")] = "cpu",
    study: Annotated[Optional[Path], typer.Option("--study", help="Optuna SQLite file (default: beside --out); "
                                                  "the same command resumes it")] = None,
    adamerging: Annotated[Optional[str], typer.Option("--adamerging", help="learn the weights without labels "
                                                      "instead of searching: task (one per model) or layer (one "
                                                      "per model and tensor)")] = None,
    plus: Annotated[bool, typer.Option("--plus", help="AdaMerging++: TIES trimming and sign election first")] = False,
    steps: Annotated[int, typer.Option("--steps", help="AdaMerging steps (Adam)")] = 500,
    lr: Annotated[float, typer.Option("--lr", help="AdaMerging learning rate")] = 1e-3,
    force: Force = False,
    quiet: Quiet = False,
):
    """Pick a recipe's coefficients (any searched value) on the tasks' tuning data; write the best recipe.
    With --adamerging, learn them without labels (entropy minimisation on the tasks' inputs)."""
    if merge_out is not None and merge_out.exists() and not force:
        raise TaskvecError(f"{merge_out}: already exists; pass --force to replace it")
    if adamerging is not None:
        from .tune.label_free import AdaOptions, tune_adamerging

        outcome = tune_adamerging(recipe, tasks, out, AdaOptions(
            granularity=adamerging, plus=plus, steps=steps, lr=lr, seed=seed, device=device, progress=not quiet))
        _print_held_out(outcome.held_out, f"AdaMerging{'++' if plus else ''} ({adamerging}-wise)")
        files = outcome.files
    else:
        if plus:
            raise TaskvecError("--plus goes with --adamerging (AdaMerging++)")
        from .tune.search import TuneOptions, tune

        options = TuneOptions(search=search, trials=trials, grid_points=grid_points, seed=seed, workers=workers,
                              ray_address=ray_address, device=device, study=study, progress=not quiet)
        result = tune(recipe, tasks, out, options)
        _print_tune(result)
        files = result.files
    for kind, path in files.items():
        err.print(f"wrote {kind.replace('_', ' ')}: {path}", highlight=False)
    if merge_out is not None:  # exactly `taskvec merge best.yaml --out DIR`
        from .merge import merge_recipe

        _summary(merge_recipe(files["recipe"], merge_out, _options("5GB", None, "cpu", "float32", force,
                                                                          False, quiet)), quiet)


def _print_tune(result) -> None:
    from rich.table import Table

    from .tune.search import _show

    console = Console()
    tuned = next(t for t in result.trials if t["values"] == result.best_values)
    table = Table(title=f"best: {_show(result.best_values)}", title_justify="left")
    for col in ("task", "metric", "tuning score", "held-out score", "held-out normalized"):
        table.add_column(col, no_wrap=col != "task", overflow="fold")
    for r in result.held_out["results"]:
        table.add_row(r["name"], r["metric"], f"{tuned['scores'].get(r['name'], float('nan')):.6g}",
                      f"{r['score']:.6g}", "-" if r["normalized"] is None else f"{r['normalized']:.4f}")
    console.print(table)
    held = result.held_out["summary"]
    console.print(f"{result.objective_name}: {result.objective:.4f} tuning, "
                  f"{held['mean_normalized'] if held['mean_normalized'] is not None else held['mean_score']:.4f} "
                  f"held out", highlight=False)


def _print_held_out(held: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=f"{title}: held-out scores", title_justify="left")
    for col in ("task", "metric", "score", "normalized"):
        table.add_column(col, no_wrap=col != "task", overflow="fold")
    for r in held["results"]:
        table.add_row(r["name"], r["metric"], f"{r['score']:.6g}", "-" if r["normalized"] is None
                      else f"{r['normalized']:.4f}")
    Console().print(table)


def _print_results(results, means: dict) -> None:
    """The table holds one number per task, so it fits 80 columns; the other metrics follow, one line per task."""
    from rich.table import Table

    table = Table(title="evaluation", title_justify="left")
    for col in ("task", "metric", "score", "normalized", "examples", "seconds"):
        table.add_column(col, no_wrap=col != "task", overflow="fold")  # numbers are never cut
    for r in results:
        table.add_row(r.name, r.metric, f"{r.score:.6g}", "-" if r.normalized is None else f"{r.normalized:.4f}",
                      str(r.examples), f"{r.seconds:.1f}")
    console = Console()
    console.print(table)
    for r in results:
        other = [f"{k}={v:.6g}" for k, v in r.extra.items() if k != r.metric]
        if other:
            console.print(f"{r.name}: {' '.join(other)}", highlight=False)
    line = f"weighted mean score {means['mean_score']:.6g}"
    if means["mean_normalized"] is not None:
        line += f", weighted mean normalized {means['mean_normalized']:.4f}"
    if any(r.metric == "neg_nll" for r in results):
        line += " (neg_nll = -nll per token: higher is better)"
    console.print(line, highlight=False)


def _write_json(path: Path, data: dict) -> None:
    import json

    from .text_files import write_atomic

    write_atomic(path, json.dumps(data, indent=2) + "\n")


@app.command(cls=Command)
@friendly
def methods():
    """List the merge methods with their parameters."""
    from rich.table import Table

    from .methods import REQUIRED, all_methods

    table = Table(title="taskvec merge methods")
    for col in ("method", "what it does", "per-model parameters", "global parameters", "base"):
        table.add_column(col)

    def show(params):
        return ", ".join(p.name + ("" if p.default is REQUIRED else f"={p.default}") for p in params) or "-"

    for m in all_methods():
        table.add_row(m.name, m.description, show(m.model_params), show(m.params), m.base)
    Console().print(table)


@app.command(cls=Command)
@friendly
def version():
    """Print the version."""
    print(f"taskvec {__version__}")


# the store's commands (push, pull, search, show, equip, store ...) register themselves on `app`; imported last, so
# that every name they take from this module exists
from . import store_cli  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":  # `python -m taskvec.cli`: run the imported module, on whose app store_cli registered
    from taskvec.cli import main as _main

    sys.exit(_main())
