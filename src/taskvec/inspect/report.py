"""An inspection's numbers as one object: JSON, plain tables (for the terminal and the HTML page), and a report
folder (report.json, PNG plots, a self-contained report.html) written atomically."""

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.cells import cell_len
from rich.table import Table as RichTable
from rich.text import Text

from ..io.writer import atomic_folder
from .stats import PairStats, VectorStats

DEFINITIONS = {
    "delta": "δ: one entry of a task vector, fine-tuned − base computed in float32 as the merge does; every sum "
             "below is accumulated in float64",
    "l2_norm": "sqrt(Σ δ²) over the whole task vector",
    "l1_norm": "sum of |δ| (the vector's L1 mass)",
    "fraction_changed": "entries with |δ| > tolerance, over all entries",
    "l2_by_layer": "L2 norm of one transformer block's entries ('other': embeddings, final norm, head...)",
    "l2_by_module": "L2 norm over all layers of one parameter kind (name without its 'layers.N.' prefix)",
    "cosine": "Σ δa·δb / (‖τa‖·‖τb‖) in float64, clipped to [-1, 1]; null when a vector is zero",
    "sign_conflict_rate": "among entries with |δa| > tolerance and |δb| > tolerance, the fraction of opposite signs",
    "top_k_jaccard": "|A∩B| / |A∪B| of the top-k% masks; a mask holds the entries with δ ≠ 0 and |δ| ≥ the exact "
                     "k%-th largest magnitude of the whole vector (float32; every entry tied with it is in the mask)",
    "ties_trim_dropped": "share of the pair's L1 mass (Σ|δa| + Σ|δb|) that TIES' trim removes: entries outside "
                         "each vector's top-density of its tensor (ties at the threshold kept in memory order)",
    "ties_sign_dropped": "share of the pair's L1 mass in trimmed entries whose sign loses TIES' election (by sum, "
                         "weights 1, ties go to +)",
    "ties_total_dropped": "ties_trim_dropped + ties_sign_dropped",
}


@dataclass
class InspectReport:
    """What ``taskvec.inspect_vectors`` finds: per task vector, per pair and per layer."""

    settings: dict
    vectors: list[VectorStats]
    pairs: list[PairStats]
    tensors: int  # floating-point tensors compared
    parameters: int  # their entries
    skipped: list[dict] = field(default_factory=list)  # [{"tensor", "reason"}]
    seconds: float = 0.0

    def most_conflicting_layers(self, n: int = 5) -> list[dict]:
        """The (pair, layer) cells with the highest sign-conflict rate: where a merge's interference concentrates."""
        cells = [{"a": p.a, "b": p.b, "layer": layer, **values}
                 for p in self.pairs for layer, values in p.by_layer.items()
                 if values["sign_conflict_rate"] is not None]
        cells.sort(key=lambda c: (-c["sign_conflict_rate"], -c["opposite_signs"]))
        return cells[:n]

    def to_dict(self) -> dict:
        def keyed(d):  # JSON object keys: top-k percentages as "1", "5", "20"
            return {f"{k:g}" if isinstance(k, (int, float)) else k: v for k, v in d.items()}

        vectors = [{**asdict(v), "top_k_threshold": keyed(v.top_k_threshold), "top_k_size": keyed(v.top_k_size)}
                   for v in self.vectors]
        pairs = [{**asdict(p), "top_k_jaccard": keyed(p.top_k_jaccard)} for p in self.pairs]
        return {
            "taskvec_version": self.settings["taskvec_version"], "settings": self.settings,
            "tensors": {"compared": self.tensors, "parameters": self.parameters, "skipped": self.skipped},
            "vectors": vectors, "pairs": pairs, "most_conflicting_layers": self.most_conflicting_layers(),
            "definitions": DEFINITIONS, "seconds": round(self.seconds, 3),
        }

    def save(self, out: str | Path, force: bool = False) -> Path:
        """Write report.json, the plots and report.html into a new folder `out` (replaced only with `force`)."""
        from .plots import write_plots  # matplotlib only when a report folder is asked for

        out = Path(out)
        with atomic_folder(out, force) as tmp:
            (tmp / "report.json").write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
            plots = write_plots(self, tmp)
            (tmp / "report.html").write_text(to_html(self, [(title, tmp / name) for title, name in plots]))
        return out


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    labels: int  # the first `labels` columns name things (may be shortened); the others hold numbers (never are)


def fmt(x, percent: bool = False) -> str:
    if x is None:
        return "–"
    if percent:
        return f"{100 * x:.2f}%"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.4g}"


def short_labels(labels: list[str]) -> list[str]:
    """Folder names when they tell the inputs apart (terminal tables are narrow), else the labels as given."""
    names = [Path(label.rstrip("/")).name or label for label in labels]
    return names if len(set(names)) == len(names) else labels


def tables(report: InspectReport, full: bool = False) -> list[Table]:
    """The report as tables: per vector, per pair (agreement, then TIES' losses), most conflicting layers; with
    `full`, also norms per layer and per module type."""
    ks = report.settings["top_k_percent"]
    labels = report.vectors and short_labels([v.label for v in report.vectors])
    name = dict(zip([v.label for v in report.vectors], labels))
    out = [Table(
        "Task vectors", ["task vector", "kind", "entries", "L2 norm", "L1 mass", "changed"],
        [[name[v.label], v.kind, fmt(v.numel), fmt(v.l2_norm), fmt(v.l1_norm), fmt(v.fraction_changed, True)]
         for v in report.vectors], labels=2,
    )]
    if report.pairs:
        out.append(Table(
            "Pairs: agreement", ["a", "b", "cosine", "sign conflicts", "changed in both"]
            + [f"top-{k:g}% Jaccard" for k in ks],
            [[name[p.a], name[p.b], fmt(p.cosine), fmt(p.sign_conflict_rate, True), fmt(p.both_changed)]
             + [fmt(p.top_k_jaccard[k]) for k in ks] for p in report.pairs], labels=2,
        ))
        out.append(Table(
            f"Pairs: L1 mass a TIES merge drops (density {report.settings['density']:g} per tensor)",
            ["a", "b", "by trimming", "by sign election", "total"],
            [[name[p.a], name[p.b], fmt(p.ties_trim_dropped, True), fmt(p.ties_sign_dropped, True),
              fmt(p.ties_total_dropped, True)] for p in report.pairs], labels=2,
        ))
        out.append(Table(
            "Most conflicting layers", ["a", "b", "layer", "sign conflicts", "changed in both", "cosine"],
            [[name[c["a"]], name[c["b"]], c["layer"], fmt(c["sign_conflict_rate"], True), fmt(c["both_changed"]),
              fmt(c["cosine"])] for c in report.most_conflicting_layers()], labels=3,
        ))
    if full:
        for title, attr, key in (("L2 norm per layer", "l2_by_layer", "layer"),
                                 ("L2 norm per module type", "l2_by_module", "module")):
            keys = list(getattr(report.vectors[0], attr))
            out.append(Table(title, [key] + labels,
                             [[k] + [fmt(getattr(v, attr).get(k)) for v in report.vectors] for k in keys], labels=1))
    return out


SHORT_LABEL = 4  # a label shortened this far ("ft-…") still starts like itself; header words shorten only then


def column_widths(t: Table, width: int) -> list[int]:
    """Widths that fit `t` in `width` terminal columns, giving up information in this order: numeric headers wrap
    at spaces; the widest labels shorten (to end in '…'), down to SHORT_LABEL; then labels and numeric header
    words shorten together. A number keeps its full width whatever the terminal."""
    cells = [[cell_len(row[i]) for row in t.rows] for i in range(len(t.columns))]
    natural = [max([cell_len(name), *lens]) for name, lens in zip(t.columns, cells)]
    room = width - (3 * len(t.columns) + 1)  # each column: a border and one space of padding either side
    if sum(natural) <= room:
        return natural
    numeric = range(t.labels, len(t.columns))
    numbers = [max(lens, default=1) for lens in cells]
    start = [max([cell_len(word) for word in name.split()] + lens) if i in numeric else w
             for i, (name, lens, w) in enumerate(zip(t.columns, cells, natural))]
    labels_first = [w if i in numeric else min(w, SHORT_LABEL) for i, w in enumerate(start)]
    together = [n if i in numeric else 1 for i, n in enumerate(numbers)]
    widths = capped(start, labels_first, room) or capped(start, together, room) or together  # too narrow: overflow
    spare = room - sum(widths)
    for i in numeric:  # unwrap the headers there is still room for
        grow = natural[i] - widths[i]
        if 0 < grow <= spare:
            widths[i], spare = natural[i], spare - grow
    return widths


def capped(widths: list[int], floors: list[int], room: int) -> list[int] | None:
    """`widths` with the widest cut down to a common cap, none below its floor, to fit `room`; None if the floors
    alone don't fit."""
    def cut(cap):
        return [max(f, min(w, cap)) for w, f in zip(widths, floors)]

    if sum(floors) > room:
        return None
    cap = max(widths)
    while sum(cut(cap)) > room:
        cap -= 1
    return cut(cap)


def rich_table(t: Table, width: int) -> RichTable:
    """`t` for a terminal `width` columns wide: labels end in '…' when they must, numbers are never cut."""
    table = RichTable(title=t.title, title_justify="left")
    for i, (name, w) in enumerate(zip(t.columns, column_widths(t, width))):
        header = Text(name, no_wrap=False)  # headers wrap at spaces, whatever their column does
        if i < t.labels:
            table.add_column(header, width=w, no_wrap=True, overflow="ellipsis")
        else:
            longest = max((cell_len(row[i]) for row in t.rows), default=1)
            table.add_column(header, justify="right", width=w, min_width=longest, no_wrap=True)
    for row in t.rows:
        table.add_row(*row)
    return table


def settings_line(report: InspectReport) -> str:
    s = report.settings
    return (f"{report.tensors} tensors ({report.parameters:,} entries) compared, {len(report.skipped)} left out; "
            f"tolerance {s['tolerance']:g}, TIES density {s['density']:g} (per tensor), top-k "
            f"{', '.join(f'{k:g}%' for k in s['top_k_percent'])}; base {s['base'] or '-'}; {report.seconds:.1f} s"
            + (f"; vocabularies differ, rows compared by token on the base's: {s['vocabulary']}"
               if s.get("vocabulary") else ""))


STYLE = ("<style>body{font-family:sans-serif;margin:2em;max-width:72em}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:1em 0}</style>")


def to_html(report: InspectReport, images: list[tuple[str, Path]]) -> str:
    """One self-contained page: settings, definitions, the tables, and the plots embedded as base64 PNGs."""
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>taskvec inspect</title>{STYLE}</head><body>",
        f"<h1>taskvec inspect</h1><p>{e(settings_line(report))}</p>",
        ("<p>Inputs: " + ", ".join(f"<code>{e(i['ref'])}</code> ({e(i['kind'])})" for i in report.settings["inputs"])
         + f"; taskvec {e(report.settings['taskvec_version'])}.</p>"),
    ]
    for t in tables(report, full=True):
        parts.append(f"<h2>{e(t.title)}</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
        parts.extend("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in t.rows)
        parts.append("</table>")
    for title, path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Definitions</h2><dl>")
    parts.extend(f"<dt><code>{e(k)}</code></dt><dd>{e(v)}</dd>" for k, v in DEFINITIONS.items())
    parts.append("</dl>")
    if report.skipped:
        parts.append("<h2>Tensors left out</h2><ul>")
        parts.extend(f"<li><code>{e(s['tensor'])}</code>: {e(s['reason'])}</li>" for s in report.skipped)
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
