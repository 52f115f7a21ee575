"""Result files of a run (bench/README.md, "Result files"): the JSON document, a markdown table
and a PNG plot made from it, the console table, and the README's headline table.
"""
from __future__ import annotations

import collections
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import re
from typing import Dict, List, Optional, Tuple

import torch

from .grid import ALL_CELLS, CELLS, CPU_CELLS, CPU_LM, CPU_RL, DTYPES, MODES, PRESETS, build_grid
from .implementations import BASELINES
from .measure import UNSTEADY_MEDIAN_OVER_MIN

ROW_KEY = ("impl", "cell", "B", "H", "T", "dtype", "mode")


def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        # The thread count is part of a CPU's name: runs at 1 and 2 threads are two machines'
        # worth of results, kept in separate files.
        threads = torch.get_num_threads()
        name = (f"cpu {platform.processor() or platform.machine()} ({os.cpu_count()} cores, "
                f"{threads} thread{'s' if threads > 1 else ''})")
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {"device": name, "torch": torch.__version__, "triton": triton,
            "cuda": torch.version.cuda, "date": datetime.date.today().isoformat()}


def file_stem(document: dict) -> str:
    """``<gpu>-<yyyy-mm-dd>``, the device name lower-cased with runs of other characters as '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", document["device"].lower()).strip("-")
    grid = f"-{document['grid']}" if document.get("grid") else ""   # a separate grid (``--rl``)
    return f"{slug}{grid}-{document['date']}"


def _same_machine_and_day(old: dict, new: dict) -> bool:
    return all(old.get(k) == new[k] for k in ("device", "torch", "triton", "cuda", "date"))


def _key(entry: dict) -> tuple:
    return tuple(entry.get(k) for k in ROW_KEY)


def merge(old: dict, new: dict) -> dict:
    """``new`` plus the rows of ``old`` it did not re-measure, when both come from the same
    device and versions: a grid too long for one session is run in parts on the same day.
    A row keeps the ratios computed within the run that measured it."""
    if not _same_machine_and_day(old, new):
        return new
    measured = {_key(r) for r in new["rows"]} | {_key(f) for f in new["failed"]}
    merged = dict(new)
    merged["rows"] = [r for r in old["rows"] if _key(r) not in measured] + new["rows"]
    merged["failed"] = [f for f in old["failed"] if _key(f) not in measured] + new["failed"]
    merged["missing"] = new["missing"] + [m for m in old["missing"] if m not in new["missing"]]
    merged["runs"] = old.get("runs", []) + new["runs"]
    return merged


# A re-measured row whose median moved by more than this factor from the same day's earlier run
# is reported: timing noise on a quiet machine stays well inside it.
MOVED_FACTOR = 1.5


def moved(old: dict, new: dict, factor: float = MOVED_FACTOR) -> List[str]:
    """The rows ``new`` re-measured whose median moved by more than ``factor`` (either way) from
    the same row of an earlier run of the same machine and day: one of the two runs was
    disturbed, and a merged file would otherwise show the new figure without a sign."""
    if not _same_machine_and_day(old, new):
        return []
    before = {_key(r): r["ms"] for r in old["rows"] if r.get("ms")}
    lines = []
    for row in new["rows"]:
        earlier = before.get(_key(row))
        if earlier and row["ms"] and max(row["ms"] / earlier, earlier / row["ms"]) > factor:
            lines.append(f"{row['impl']} {row_label(row)}: {earlier:.3g} ms earlier today, "
                         f"{row['ms']:.3g} ms now ({row['ms'] / earlier:.2f}×)")
    return lines


def existing(document: dict, out_dir: str) -> Optional[dict]:
    """The result file ``write`` would merge ``document`` into, if there is one."""
    path = os.path.join(out_dir, file_stem(document) + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write(document: dict, out_dir: str, fresh: bool = False) -> Dict[str, str]:
    """Writes <stem>.json (merged with an existing one of the same day unless ``fresh``), then
    <stem>.md and <stem>.png from it. Returns the paths."""
    previous = None if fresh else existing(document, out_dir)
    return write_merged(document, previous, out_dir)


def write_merged(document: dict, previous: Optional[dict], out_dir: str,
                 plot_too: bool = True) -> Dict[str, str]:
    """``write`` with the document to merge into given (None: none): a run that writes its rows
    as they finish merges each time into the file as it was before the run.  ``plot_too``
    False leaves the PNG out (seconds of matplotlib, drawn once the run ends)."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, file_stem(document))
    paths = {"json": stem + ".json", "md": stem + ".md", "png": stem + ".png"}
    if previous is not None:
        document = merge(previous, document)
    with open(paths["json"] + ".part", "w") as f:
        json.dump(document, f, indent=1, allow_nan=False)
        f.write("\n")
    # Renamed into place: a run killed while writing leaves the previous complete file.
    os.replace(paths["json"] + ".part", paths["json"])
    render(paths["json"], plot_too)
    if not plot_too:
        del paths["png"]
    return paths


def render(json_path: str, plot_too: bool = True) -> None:
    """(Re)writes the markdown table and the plot beside a result JSON."""
    with open(json_path) as f:
        document = json.load(f)
    stem = os.path.splitext(json_path)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown(document))
    if plot_too:
        plot(document, stem + ".png")


# ----------------------------------------------------------------------------- what it says

def baseline(document: dict) -> dict:
    """The document's torch.nn rows ({impl, name, what}); files written before the field
    existed are read by the implementation names of their rows."""
    if document.get("baseline"):
        return document["baseline"]
    impls = {r["impl"] for r in document["rows"]}
    return BASELINES["torch-nn" if "torch-nn" in impls and "cudnn" not in impls else "cudnn"]


def row_label(row: dict) -> str:
    return f"{row['cell']} B={row['B']} H={row['H']} T={row['T']} {row['dtype']} {row['mode']}"


def legend(document: dict) -> str:
    """What the columns of ``rows_table`` mean for this document (markdown and console)."""
    base = baseline(document)
    parts = [
        f"µs/step: the median timed call / T (warm-up excluded, input sets rotated). "
        f"ms min / median / max: over the timed calls; ⚠ marks a row whose median is more than "
        f"{UNSTEADY_MEDIAN_OVER_MIN}× its fastest call: at least half of its calls ran that much "
        f"slower than the machine can (another process on the cores?), so its figures are not "
        f"to be trusted; run it again. \"loaded N×\" marks a row measured on a loaded machine: "
        f"a calibration workload timed before or after it ran N× slower than the quietest of "
        f"its run{_calibrations(document)}, even after reruns; every call was slowed alike, "
        f"which the spread cannot show; run it again.",
        f"× {base['name']}: against {base['what']}, on the plain cell of the same family, "
        f"shape, dtype and mode (ln_lstm against lstm, gru_reg against gru): the floor, with "
        f"neither layer norm nor regularizers (`ratio_vs_cudnn` in the JSON).",
        "× loop: against torch-loop, the loop a user writes today for a layer-norm or "
        "regularized cell (LSTMCell / GRUCell math per step, torch.nn.LayerNorm, torch.bernoulli "
        "masks). × eager: against the fastrnn reference's Python loop.",
        f"peak MiB: {document.get('peak_mem') or 'what one call holds beyond weights and inputs'}.",
        "max rel err: max |a − e| / max |e| over the outputs and, in train mode, the gradients, "
        "against the float64 reference module run on the same weights, input and masks; "
        "— where the row does not compute that (the note says why).",
    ]
    if base["impl"] != "cudnn":
        parts.append("No GPU: fastrnn-cpu rows are results of the CPU backend on this machine at "
                     "the thread count in the device name; the GPU backends did not run.")
    return "\n".join(f"- {p}" for p in parts) + "\n"


def _calibrations(document: dict) -> str:
    """What the calibration was and its quietest time in each run that had one."""
    runs = [r["calibration"] for r in document.get("runs", [])
            if (r.get("calibration") or {}).get("quietest_ms")]
    if not runs:
        return ""
    quietest = ", ".join(f"{c['quietest_ms']:.3g} ms" for c in runs)
    factors = sorted({c["load_factor"] for c in runs})
    return (f" (flagged above {' / '.join(f'{f:g}' for f in factors)}×; calibration: "
            f"{runs[-1]['what']}; quietest {quietest})")


# ---------------------------------------------------------------------------------- markdown

def _number(value: Optional[float], fmt: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, fmt) + suffix


def _mib(value: Optional[int]) -> str:
    return "—" if value is None else f"{value / 2**20:.3g}"


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


def _ratio(value: Optional[float]) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}×" if value >= 100 else f"{value:.3g}×"


def _calls(row: dict) -> str:
    """min / median / max of the timed calls in ms, ⚠ when too unsteady."""
    if row["ms"] is None:
        return "—"
    low, high = row.get("ms_min"), row.get("ms_max")
    if low is None or high is None:  # a file from before the spread was kept
        return format(row["ms"], ".3g")
    mark = " ⚠" if row.get("unsteady") else ""
    if row.get("loaded"):
        mark += f" loaded {row['load_ratio']:.3g}×"
    return f"{low:.3g} / {row['ms']:.3g} / {high:.3g}{mark}"


def rows_table(rows: List[dict], document: dict) -> str:
    """The rows as a markdown table; ``document`` names the baseline of the ratio column."""
    header = (f"| cell | mode | dtype | B | H | T | impl | µs/step | ms min / median / max "
              f"| × {baseline(document)['name']} | × loop | × eager | peak MiB | max rel err "
              f"| note |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in sorted(rows, key=_sort_key):
        lines.append(
            f"| {r['cell']} | {r['mode']} | {r['dtype']} | {r['B']} | {r['H']} | {r['T']} "
            f"| {r['impl']} | {_number(r['us_per_step'], '.3g')} | {_calls(r)} "
            f"| {_ratio(r['ratio_vs_cudnn'])} | {_ratio(r.get('ratio_vs_loop'))} "
            f"| {_ratio(r['ratio_vs_eager'])} | {_mib(r['peak_mem_bytes'])} "
            f"| {_number(r['max_rel_err'], '.1e')} | {_note(r)} |")
    return "\n".join(lines) + "\n"


def _header(document: dict) -> str:
    return (f"Device: {document['device']}; torch {document['torch']}, triton "
            f"{document['triton']}, CUDA {document['cuda']}; {document['date']}.\n")


def markdown(document: dict) -> str:
    parts = ["# fastrnn benchmark\n\n", _header(document), "\n", legend(document), "\n",
             rows_table(document["rows"], document)]
    moved_lines = [line for entry in document.get("runs", []) for line in entry.get("moved", [])]
    if moved_lines:
        parts.append(f"\n## Rows that moved by more than {MOVED_FACTOR}× between today's runs\n\n"
                     "One of the two runs was disturbed; the table holds the later one.\n\n")
        parts += [f"- {line}\n" for line in moved_lines]
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
    return _header(document) + "\n" + rows_table(rows, document)


def _find_row(document: dict, impl: str, cell: str, mode: str,
              shape: Optional[dict] = None) -> Optional[dict]:
    """The row of ``impl`` for ``cell`` and ``mode`` (at ``shape``'s B, H, T when given)."""
    for row in document["rows"]:
        if (row["impl"], row["cell"], row["mode"]) == (impl, cell, mode) and (
                shape is None or (row["B"], row["H"], row["T"]) == (shape["B"], shape["H"],
                                                                    shape["T"])):
            return row
    return None


def _table_ms(row: Optional[dict]) -> str:
    """A README table's time of a row: its median ms, and how loaded the machine was."""
    if row is None or row["ms"] is None:
        return "—"
    return f"{row['ms']:.3g}" + (f" (loaded {row['load_ratio']:.2g}×)" if row.get("loaded")
                                 else "")


def _table_ratio(row: Optional[dict], other: Optional[dict]) -> str:
    return "—" if row is None or other is None or not other["ms"] else \
        f"{row['ms'] / other['ms']:.2f}×"


def cpu_table(document: dict) -> str:
    """The README's CPU table: at the CPU grid's two shapes, each cell's fastrnn-cpu row beside
    the torch loop, the plain torch.nn cell and the reference, with the ratios taken within the
    run; a loaded row says so."""
    def find(impl, cell, shape, mode):
        return _find_row(document, impl, cell, mode, shape)

    ms, ratio = _table_ms, _table_ratio
    lines = ["| shape | cell | mode | fastrnn-cpu ms | torch loop ms | torch.nn ms (plain cell) "
             "| reference ms | × loop | × torch.nn |", "|---|---|---|---|---|---|---|---|---|"]
    for label, shape in (("RL", CPU_RL), ("LM", CPU_LM)):
        for cell in CPU_CELLS:
            for mode in ("train", "forward"):
                fused = find("fastrnn-cpu", cell, shape, mode)
                if fused is None:
                    continue
                loop = find("torch-loop", cell, shape, mode)
                plain = find("torch-nn", CELLS[cell].baseline, shape, mode)
                reference = find("reference-eager", cell, shape, mode)
                lines.append(f"| {label} B={shape['B']} T={shape['T']} H={shape['H']} | {cell} | "
                             f"{mode} | {ms(fused)} | {ms(loop)} | {ms(plain)} | {ms(reference)} | "
                             f"{ratio(fused, loop)} | {ratio(fused, plain)} |")
    return _header(document) + "\n" + "\n".join(lines) + "\n"


def rl_table(document: dict) -> str:
    """The README's episode-starts table (``--rl`` runs): each layer-norm cell's fastrnn row with
    resets beside the same row without them, the user's loop with a ``torch.where`` reset per
    step, and torch.nn's plain cell on the split segments, ratios taken within the run."""
    def find(impl, cell, mode):
        return _find_row(document, impl, cell, mode)

    ms, ratio = _table_ms, _table_ratio
    fused = sorted({row["impl"] for row in document["rows"]
                    if row["impl"].startswith("fastrnn-")})
    lines = ["| backend | cell | mode | with resets ms | without ms | torch loop ms | "
             "torch.nn on segments ms | × without | × loop |", "|---|---|---|---|---|---|---|---|---|"]
    for impl in fused:
        for cell in ("ln_lstm", "ln_gru"):
            for mode in ("train", "forward"):
                reset = find(impl, f"{cell}_rs", mode)
                if reset is None:
                    continue
                without = find(impl, cell, mode)
                loop = find("torch-loop", f"{cell}_rs", mode)
                segments = find(document.get("baseline", {}).get("impl", "torch-nn"),
                                CELLS[f"{cell}_rs"].baseline, mode)
                lines.append(f"| {impl} | {cell} | {mode} | {ms(reset)} | {ms(without)} | "
                             f"{ms(loop)} | {ms(segments)} | {ratio(reset, without)} | "
                             f"{ratio(reset, loop)} |")
    return _header(document) + "\n" + "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- plot

SHAPE_AXES = ("H", "T", "B")
UNSTEADY_LABEL = "unsteady row (⚠ in the table)"
LOADED_LABEL = "loaded machine (\"loaded\" in the table)"


def plot_axis(rows: List[dict]) -> Tuple[str, Dict[str, int]]:
    """(x axis, the other shape axes held fixed): the axis with the most distinct values (H
    first on a tie), at the combination of the other two that has the most rows; on a tie, the
    one nearest the middle of each axis (B=64 on the GPU grid, its headline batch)."""
    axis = max(SHAPE_AXES, key=lambda a: (len({r[a] for r in rows}), -SHAPE_AXES.index(a)))
    others = [a for a in SHAPE_AXES if a != axis]
    values = {a: sorted({r[a] for r in rows}) for a in others}

    def off_middle(combination):
        return sum(abs(values[a].index(v) - (len(values[a]) - 1) / 2)
                   for a, v in zip(others, combination))

    counts = collections.Counter(tuple(r[a] for a in others) for r in rows)
    fixed = min(counts, key=lambda c: (-counts[c], off_middle(c))) if counts else ()
    return axis, dict(zip(others, fixed))


def plot(document: dict, path: str) -> None:
    """µs/step against H (or whichever shape axis the rows vary most) per implementation and
    dtype, one panel per cell (columns) and mode (rows), log-log; bars span the fastest to the
    slowest timed call; unsteady rows are ringed in red, loaded ones in orange.  A regularized
    or layer-norm cell's panel also draws the torch.nn plain cell it is measured against,
    dotted, as the floor."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    rows = [r for r in document["rows"] if r["ms"] is not None]
    base = baseline(document)
    axis_name, fixed = plot_axis(rows)
    rows = [r for r in rows if all(r[a] == v for a, v in fixed.items())]
    cells = [c for c in ALL_CELLS if any(r["cell"] == c for r in rows)]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    impls = sorted({r["impl"] for r in rows})
    colors = {impl: pyplot.get_cmap("tab10")(i % 10) for i, impl in enumerate(impls)}
    styles = {"float32": "-", "bfloat16": "--", "float16": ":"}
    markers = {"float32": "o", "bfloat16": "s", "float16": "^"}
    figure, axes = pyplot.subplots(max(1, len(modes)), max(1, len(cells)),
                                   figsize=(4.4 * max(1, len(cells)), 3.6 * max(1, len(modes))),
                                   squeeze=False)
    handles = {}
    for (m, mode), (c, cell) in itertools.product(enumerate(modes), enumerate(cells)):
        axis = axes[m][c]
        floor_cell = CELLS[cell].baseline
        lines = collections.defaultdict(list)
        for r in rows:
            if r["mode"] != mode:
                continue
            if r["cell"] == cell:
                lines[(r["impl"], r["dtype"], False)].append(r)
            elif cell != floor_cell and r["cell"] == floor_cell and r["impl"] == base["impl"]:
                lines[(r["impl"], r["dtype"], True)].append(r)
        for (impl, dtype, floor), points in sorted(lines.items()):
            points.sort(key=lambda r: r[axis_name])
            xs = [r[axis_name] for r in points]
            per_step = [1e3 / r["T"] for r in points]    # ms per call -> µs per step
            ys = [r["ms"] * k for r, k in zip(points, per_step)]
            low = [max(0.0, r["ms"] - (r.get("ms_min") or r["ms"])) * k
                   for r, k in zip(points, per_step)]
            high = [max(0.0, (r.get("ms_max") or r["ms"]) - r["ms"]) * k
                    for r, k in zip(points, per_step)]
            label = (f"{impl} plain {floor_cell} (floor)" if floor else impl) + (
                f" {dtype}" if len({r["dtype"] for r in rows}) > 1 else "")
            handle = axis.errorbar(xs, ys, yerr=[low, high], color=colors[impl],
                                   linestyle=":" if floor else styles[dtype],
                                   marker=markers[dtype], markersize=4, capsize=2,
                                   linewidth=1.2 if floor else 1.8,
                                   alpha=0.6 if floor else 1.0, label=label)
            handles.setdefault(label, handle)
            shaky = [(x, y) for x, y, r in zip(xs, ys, points) if r.get("unsteady")]
            if shaky:
                handles[UNSTEADY_LABEL] = axis.scatter(
                    *zip(*shaky), s=60, facecolors="white", edgecolors="red", linewidths=1.5,
                    marker=markers[dtype], zorder=3, label=UNSTEADY_LABEL)
            burdened = [(x, y) for x, y, r in zip(xs, ys, points) if r.get("loaded")]
            if burdened:
                # Wider than the red ring: a row both unsteady and loaded shows both.
                handles[LOADED_LABEL] = axis.scatter(
                    *zip(*burdened), s=130, facecolors="none", edgecolors="darkorange",
                    linewidths=1.5, marker=markers[dtype], zorder=3, label=LOADED_LABEL)
        title = f"{cell} {mode}" + (" (masks drawn)" if CELLS[cell].draws_masks else "")
        axis.set_title(title, fontsize=10)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        # Labels at 1, 2 and 5 of each decade, as plain numbers: a panel spanning less than a
        # decade would otherwise show one label or none.
        axis.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(ticker.NullFormatter())
        ticks = sorted({r[axis_name] for r in rows})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.set_xticks([], minor=True)
        axis.grid(True, which="major", alpha=0.3)
        axis.set_xlabel(axis_name + ("  (I = H)" if axis_name == "H" else ""), fontsize=9)
        if c == 0:
            axis.set_ylabel("µs per time step", fontsize=9)
        axis.tick_params(labelsize=8)
    held = ", ".join(f"{a}={v}" for a, v in fixed.items())
    note = "" if base["impl"] == "cudnn" else " — no GPU: a check of the harness, not a result"
    figure.suptitle(f"{document['device']}, torch {document['torch']}, {document['date']}: "
                    f"time per step at {held}; bars: fastest to slowest call{note}", fontsize=10)
    for flag in (UNSTEADY_LABEL, LOADED_LABEL):  # last in the legend
        if flag in handles:
            handles[flag] = handles.pop(flag)
    columns = min(len(handles), 6)
    figure.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                  ncol=max(1, columns), fontsize=8, frameon=False)
    legend_rows = -(-len(handles) // max(1, columns))
    figure.tight_layout(rect=(0, 0.015 + 0.03 * legend_rows * 2 / max(1, len(modes)), 1, 0.95))
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
