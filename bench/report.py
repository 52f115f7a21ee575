"""Result files of a run (BENCHMARKS.md "result files"): the JSON document, a markdown table and
a PNG plot made from it, and the README's headline table.
"""
from __future__ import annotations

import collections
import datetime
import importlib.metadata
import json
import os
import platform
import re
from typing import Dict, List, Optional

import torch

from .grid import ALL_CELLS, DTYPES, MODES, PRESETS, build_grid

ROW_KEY = ("impl", "cell", "B", "H", "T", "dtype", "mode")


def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {"device": name, "torch": torch.__version__, "triton": triton,
            "cuda": torch.version.cuda, "date": datetime.date.today().isoformat()}


def file_stem(document: dict) -> str:
    """``<gpu>-<yyyy-mm-dd>``, the device name lower-cased with runs of other characters as '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", document["device"].lower()).strip("-")
    return f"{slug}-{document['date']}"


def merge(old: dict, new: dict) -> dict:
    """``new`` plus the rows of ``old`` it did not re-measure, when both come from the same
    device and versions: a grid too long for one session is run in parts on the same day.
    A row keeps the ratios computed within the run that measured it."""
    if any(old.get(k) != new[k] for k in ("device", "torch", "triton", "cuda", "date")):
        return new

    def key(entry):
        return tuple(entry.get(k) for k in ROW_KEY)

    measured = {key(r) for r in new["rows"]} | {key(f) for f in new["failed"]}
    merged = dict(new)
    merged["rows"] = [r for r in old["rows"] if key(r) not in measured] + new["rows"]
    merged["failed"] = [f for f in old["failed"] if key(f) not in measured] + new["failed"]
    merged["missing"] = new["missing"] + [m for m in old["missing"] if m not in new["missing"]]
    merged["runs"] = old.get("runs", []) + new["runs"]
    return merged


def write(document: dict, out_dir: str, fresh: bool = False) -> Dict[str, str]:
    """Writes <stem>.json (merged with an existing one of the same day unless ``fresh``), then
    <stem>.md and <stem>.png from it. Returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, file_stem(document))
    paths = {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}
    if not fresh and os.path.exists(paths["json"]):
        with open(paths["json"]) as f:
            document = merge(json.load(f), document)
    with open(paths["json"], "w") as f:
        json.dump(document, f, indent=1, allow_nan=False)
        f.write("\n")
    render(paths["json"])
    return paths


def render(json_path: str) -> None:
    """(Re)writes the markdown table and the plot beside a result JSON."""
    with open(json_path) as f:
        document = json.load(f)
    stem = os.path.splitext(json_path)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown(document))
    plot(document, stem + ".png")


# ---------------------------------------------------------------------------------- markdown

def _number(value: Optional[float], fmt: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, fmt) + suffix


def _mib(value: Optional[int]) -> str:
    return "—" if value is None else f"{value / 2**20:.1f}"


def _sort_key(row: dict) -> tuple:
    return (ALL_CELLS.index(row["cell"]), MODES.index(row["mode"]),
            list(DTYPES).index(row["dtype"]), row["B"], row["H"], row["T"],
            row["ms"] if row["ms"] is not None else float("inf"))


def _note(row: dict) -> str:
    parts = []
    if row.get("compile_s") is not None:
        parts.append(f"compile {row['compile_s']:.1f} s")
    if row.get("note"):
        parts.append(row["note"])
    return "; ".join(parts)


def rows_table(rows: List[dict]) -> str:
    header = ("| cell | mode | dtype | B | H | T | impl | ms | µs/step | × cuDNN | × eager "
              "| peak MiB | max rel err | note |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in sorted(rows, key=_sort_key):
        lines.append(
            f"| {r['cell']} | {r['mode']} | {r['dtype']} | {r['B']} | {r['H']} | {r['T']} "
            f"| {r['impl']} | {_number(r['ms'], '.3g')} | {_number(r['us_per_step'], '.3g')} "
            f"| {_number(r['ratio_vs_cudnn'], '.2f', '×')} "
            f"| {_number(r['ratio_vs_eager'], '.3f', '×')} | {_mib(r['peak_mem_bytes'])} "
            f"| {_number(r['max_rel_err'], '.1e')} | {_note(r)} |")
    return "\n".join(lines) + "\n"


def _header(document: dict) -> str:
    return (f"Device: {document['device']}; torch {document['torch']}, triton "
            f"{document['triton']}, CUDA {document['cuda']}; {document['date']}.\n")


def markdown(document: dict) -> str:
    parts = ["# fastrnn benchmark\n", _header(document),
             "\nMedian of the timed calls (warm-up excluded, inputs rotated); × cuDNN is against "
             "the plain torch.nn cell of the same family, shape, dtype and mode (`torch-nn` on "
             "CPU); peak memory is what the call allocates beyond weights and inputs; max rel err "
             "is against the float32 reference (outputs and gradients, same weights and masks).\n\n",
             rows_table(document["rows"])]
    if document["missing"]:
        parts.append("\n## Not measured in this run\n\n")
        parts += [f"- {m['impl']}{' (' + m['dtype'] + ')' if m.get('dtype') else ''}: "
                  f"{m['reason']}\n" for m in document["missing"]]
    if document["failed"]:
        parts.append("\n## Failed\n\n")
        parts += [f"- {f['impl']} {f['cell']} B={f['B']} H={f['H']} T={f['T']} {f['dtype']} "
                  f"{f['mode']}: {f['error'][:300]}\n" for f in document["failed"]]
    return "".join(parts)


def headline_table(document: dict) -> str:
    """The README's table: the headline workloads and the cuDNN rows they are measured against."""
    headline = set(build_grid(PRESETS["headline"]))
    wanted = headline | {w.with_cell(w.spec.baseline) for w in headline}
    rows = [r for r in document["rows"]
            if (r["cell"], r["B"], r["H"], r["T"], r["dtype"], r["mode"])
            in {(w.cell, w.B, w.H, w.T, w.dtype, w.mode) for w in wanted}]
    return _header(document) + "\n" + rows_table(rows)


# -------------------------------------------------------------------------------------- plot

def plot(document: dict, path: str) -> None:
    """Time against H per implementation and dtype, one panel per cell and mode, log scale, at
    the (B, T) with the most rows."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = [r for r in document["rows"] if r["ms"] is not None]
    shapes = collections.Counter((r["B"], r["T"]) for r in rows)
    panels = sorted({(r["cell"], r["mode"]) for r in rows},
                    key=lambda p: (ALL_CELLS.index(p[0]), MODES.index(p[1])))
    columns = 2
    figure_rows = max(1, (len(panels) + 1) // columns)
    figure, axes = pyplot.subplots(figure_rows, columns, figsize=(6 * columns, 3.6 * figure_rows),
                                   squeeze=False)
    styles = {"float32": "-", "bfloat16": "--", "float16": ":"}
    if shapes:
        (batch, steps), _ = shapes.most_common(1)[0]
        for axis, (cell, mode) in zip(axes.flat, panels):
            lines = collections.defaultdict(list)
            for r in rows:
                if (r["cell"], r["mode"], r["B"], r["T"]) == (cell, mode, batch, steps):
                    lines[(r["impl"], r["dtype"])].append((r["H"], r["ms"]))
            for (impl, dtype), points in sorted(lines.items()):
                hs, ms = zip(*sorted(points))
                axis.plot(hs, ms, styles[dtype], marker="o", label=f"{impl} {dtype}")
            axis.set(title=f"{cell} {mode} (B={batch}, T={steps})", xlabel="H", ylabel="ms",
                     xscale="log", yscale="log")
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(f"{document['device']} — torch {document['torch']} — {document['date']}",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
