"""The benchmark harness on a tiny CPU grid: result files, their schema, the baseline's name,
missing implementations, the torch loop, the accuracy column against float64, the spread of
the timed calls, load detection (with a fake calibration), CPU peak memory, the plot's axes,
progress lines and the compile budget.  Nothing here asserts a timing."""
from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench import measure, report, run, suite
from bench.compiled import ReferenceCompiled
from bench.data import input_sets, master_parameters
from bench.grid import CELLS, CPU_CELLS, PRESETS, Cell, Workload, build_grid
from bench.implementations import (Implementation, Measurement, ReferenceEager, TorchNN,
                                   float64_reference)
from bench.loop import TorchLoop, loop_module, loop_prepared
from bench.measure import (UNSTEADY_MEDIAN_OVER_MIN, LoadMonitor, Prepared, Settings,
                           cpu_peak_bytes, errors, load_ratio, loaded, peak_memory_bytes,
                           seeded_result, step, unsteady)

BENCH_DIR = os.path.dirname(run.__file__)

TINY = ["--cells", "ln_lstm,gru_reg", "-B", "2", "-H", "8", "-T", "4", "--no-progress",
        "--repeats", "2", "--min-repeats", "1", "--warmup", "0"]
FAST = Settings(warmup=0, min_repeats=1, max_repeats=1, input_sets=2)

# The result-file schema (bench/README.md, "Result files"), plus the fields this suite adds.
DOCUMENT_FIELDS = {"device": str, "torch": str, "triton": (str, type(None)),
                   "cuda": (str, type(None)), "date": str, "rows": list, "missing": list,
                   "failed": list, "baseline": dict, "peak_mem": str}
NUMBER = (int, float)
MAYBE_NUMBER = (int, float, type(None))
ROW_FIELDS = {"impl": str, "cell": str, "B": int, "H": int, "T": int, "dtype": str, "mode": str,
              "ms": MAYBE_NUMBER, "us_per_step": MAYBE_NUMBER, "peak_mem_bytes": (int, type(None)),
              "max_rel_err": MAYBE_NUMBER, "ratio_vs_cudnn": MAYBE_NUMBER,
              "ratio_vs_loop": MAYBE_NUMBER, "ratio_vs_eager": MAYBE_NUMBER,
              "compile_s": MAYBE_NUMBER, "repeats": int, "ms_min": MAYBE_NUMBER,
              "ms_max": MAYBE_NUMBER, "unsteady": bool, "note": (str, type(None)),
              "loaded": bool, "load_ratio": MAYBE_NUMBER, "tries": int,
              "calibration_ms": (list, type(None))}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = run.main(TINY + ["--out-dir", str(out), "--device", "cpu"])
    files = sorted(os.listdir(out))
    with open(out / next(f for f in files if f.endswith(".json"))) as f:
        return code, out, files, json.load(f)


def _rows(document, impl, cell):
    rows = [r for r in document["rows"] if r["impl"] == impl and r["cell"] == cell]
    assert rows, (impl, cell)
    return rows


def _markdown(smoke):
    code, out, files, document = smoke
    return open(out / next(f for f in files if f.endswith(".md"))).read()


def test_smoke_run_writes_json_markdown_and_png(smoke):
    code, out, files, document = smoke
    assert code == 0
    stems = {os.path.splitext(f)[0] for f in files}
    assert len(stems) == 1 and stems.pop().endswith(datetime.date.today().isoformat())
    assert sorted(os.path.splitext(f)[1] for f in files) == [".json", ".md", ".png"]
    png = next(f for f in files if f.endswith(".png"))
    with open(out / png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = open(out / next(f for f in files if f.endswith(".md"))).read()
    for row in document["rows"]:
        assert f"| {row['cell']} | {row['mode']} |" in table and row["impl"] in table


def test_result_json_follows_the_schema(smoke):
    document = smoke[3]
    for field, kind in DOCUMENT_FIELDS.items():
        assert isinstance(document[field], kind), field
    datetime.date.fromisoformat(document["date"])
    assert document["rows"] and not document["failed"]
    for row in document["rows"]:
        for field, kind in ROW_FIELDS.items():
            assert isinstance(row[field], kind), (field, row)
        assert row["ms"] > 0 and row["repeats"] >= 1
        assert row["us_per_step"] == pytest.approx(row["ms"] * 1e3 / row["T"])
        assert row["ms_min"] <= row["ms"] <= row["ms_max"]
        # CPU peak memory from the profiler's allocation events: every step allocates at
        # least its output [T, B, H].
        assert row["peak_mem_bytes"] >= row["T"] * row["B"] * row["H"] * 4, row
        # On CPU every row is calibrated before and after: the real calibration, judged.
        assert len(row["calibration_ms"]) == 2 and all(c > 0 for c in row["calibration_ms"])
        assert 1 <= row["tries"] <= 3 and row["load_ratio"] >= 1.0
    assert "profiler" in document["peak_mem"]
    calibration = document["runs"][-1]["calibration"]
    assert "tanh(y @ A)" in calibration["what"] and calibration["active"]
    assert calibration["threads"] == torch.get_num_threads()
    # Judged against the run's quietest (which may come from a try that was not kept).
    for row in document["rows"]:
        assert row["load_ratio"] == pytest.approx(max(row["calibration_ms"])
                                                  / calibration["quietest_ms"])
        assert row["loaded"] == (row["load_ratio"] > Settings().load_factor)


def test_the_baseline_is_named_for_what_it_is_on_cpu(smoke, capsys):
    document = smoke[3]
    assert document["baseline"]["impl"] == "torch-nn"
    assert document["baseline"]["name"] == "torch.nn" and "CPU" in document["baseline"]["what"]
    table = _markdown(smoke)
    assert "| × torch.nn |" in table and "cuDNN |" not in table
    assert not any(r["impl"] == "cudnn" for r in document["rows"])
    # The console says it too (the run's own stdout).
    assert run.main(["--cells", "gru"] + TINY[2:] + ["--device", "cpu", "--impls", "torch-nn",
                                                     "--out-dir", str(smoke[1] / "console")]) == 0
    printed = capsys.readouterr().out
    assert "baseline (torch-nn): torch.nn.LSTM / torch.nn.GRU on CPU" in printed
    assert "| × torch.nn |" in printed and "× cuDNN" not in printed


def test_a_gpu_document_names_cudnn_and_an_old_one_is_read_by_its_rows():
    old_style = _document([_row("cudnn", "lstm")])          # no "baseline" field
    assert report.baseline(old_style)["impl"] == "cudnn"
    table = report.markdown(old_style)
    assert "| × cuDNN |" in table and "on CUDA, which run cuDNN" in table
    assert "not results" not in table


def test_every_row_has_its_ratios_and_compared_rows_their_error(smoke):
    rows = smoke[3]["rows"]
    cells = {(r["impl"], r["cell"]) for r in rows}
    # The plain cells are measured for the ratios although only the regularized ones were asked.
    assert {("torch-nn", "lstm"), ("torch-nn", "gru"), ("reference-eager", "ln_lstm"),
            ("reference-eager", "gru_reg"), ("torch-loop", "ln_lstm"),
            ("torch-loop", "gru_reg")} <= cells
    for row in rows:
        assert row["ratio_vs_cudnn"] is not None, row
        if row["impl"] == "torch-nn":
            assert row["ratio_vs_cudnn"] == 1.0
        if row["impl"] == "reference-eager":
            assert row["ratio_vs_eager"] == 1.0
        if row["cell"] in ("ln_lstm", "gru_reg"):
            assert row["ratio_vs_loop"] is not None, row
        if row["impl"] == "torch-loop" and row["cell"] == "gru_reg":
            continue  # its masks differ: see the next test
        # float32 against the float64 reference: a real, small, non-zero error (the float32
        # reference is no longer compared with itself).
        assert row["max_rel_err"] is not None and 0 < row["max_rel_err"] < 1e-4, row
    for row in _rows(smoke[3], "torch-loop", "ln_lstm"):
        assert row["ratio_vs_loop"] == 1.0


def test_the_loop_with_its_own_masks_reports_no_error_and_says_why(smoke):
    for row in _rows(smoke[3], "torch-loop", "gru_reg"):
        assert row["max_rel_err"] is None and row["max_rel_err_out"] is None
        assert "torch.bernoulli" in row["note"]
    assert "torch.bernoulli, not fastrnn" in _markdown(smoke)


def test_missing_implementations_are_listed_with_reasons(smoke):
    missing = {m["impl"]: m["reason"] for m in smoke[3]["missing"]}
    for name in ("fastrnn-triton", "fastrnn-cuda", "flashrnn", "haste"):
        if name in ("flashrnn", "haste") and name not in missing:
            continue  # a peer installed on this machine is not missing, only GPU-less
        assert ("GPU" in missing[name] or "not importable" in missing[name]
                or "without CUDA" in missing[name] or "runs nothing here" in missing[name]), \
            missing[name]
    # The CPU backend's rows are real results on a CPU machine; no GPU backend has one.
    assert {r["impl"] for r in smoke[3]["rows"] if r["impl"].startswith("fastrnn-")} <= {"fastrnn-cpu"}


def test_cpu_run_does_not_publish_into_results(tmp_path, monkeypatch):
    before = sorted(os.listdir(run.RESULTS_DIR))
    monkeypatch.setattr(run, "CACHE_DIR", str(tmp_path))
    assert run.main(["--cells", "gru"] + TINY[2:] + ["--device", "cpu", "--impls", "torch-nn"]) == 0
    assert sorted(os.listdir(run.RESULTS_DIR)) == before
    assert any(f.endswith(".json") for f in os.listdir(tmp_path))


class _WrongKernel(ReferenceEager):
    """The reference, but 1 % off: what a broken fast kernel looks like."""
    name = "wrong-kernel"

    def prepare(self, workload, params, device):
        right = super().prepare(workload, params, device)
        return Prepared(lambda x: [o * 1.01 for o in right.forward(x)], right.params)


def test_a_wrong_kernel_shows_in_max_rel_err():
    workload = Workload("gru_reg", 2, 8, 4, "float32", "train")
    jobs, _ = suite.plan([workload], [_WrongKernel(), ReferenceEager()], CPU)
    rows, failed = suite.run_jobs(jobs, FAST, CPU, progress="off")
    found = {r["impl"]: r["max_rel_err"] for r in rows}
    assert not failed
    # The float32 reference under the float64 reference's masks: the same masks, or its error
    # would be of order one.
    assert found["wrong-kernel"] > 5e-3 and 0 < found["reference-eager"] < 1e-5


def test_low_precision_rows_run_and_show_their_rounding():
    """bfloat16 / float16 fastrnn modules are built in float32 and cast (their initializer's
    QR has no such kernel); their error against float64 is their dtype's, not zero."""
    workloads = [Workload("ln_lstm", 2, 16, 3, dtype, "train") for dtype in ("bfloat16", "float16")]
    jobs, _ = suite.plan(workloads, [ReferenceEager(), TorchLoop()], CPU)
    rows, failed = suite.run_jobs(jobs, FAST, CPU, progress="off")
    assert not failed and len(rows) == 4
    for row in rows:
        assert 1e-4 < row["max_rel_err"] < 0.2, row


def test_the_float64_reference_is_the_same_cell_in_float64():
    workload = Workload("gru_reg", 2, 8, 4, "float32", "train")
    params = master_parameters(workload, 0)
    x = input_sets(workload, 1, 1, CPU)[0]
    exact = float64_reference(workload, params, x, CPU, seed=0)
    assert all(o.dtype == torch.float64 for o in exact.outputs)
    assert set(exact.grads) == {"input"} | set(params)
    # Another seed draws other masks: the reference's masks follow the seed.
    other = float64_reference(workload, params, x, CPU, seed=1)
    assert not torch.equal(exact.outputs[0], other.outputs[0])


def test_a_compile_over_budget_is_a_row_that_says_so():
    workload = Workload("lstm", 2, 8, 4, "float32", "forward")
    jobs, _ = suite.plan([workload], [ReferenceCompiled(compile_budget_s=0.01)], CPU)
    rows, failed = suite.run_jobs(jobs, FAST, CPU, progress="off")
    assert not failed and len(rows) == 1
    assert rows[0]["ms"] is None and rows[0]["compile_s"] is None
    assert "budget" in rows[0]["note"]


def _document(rows, date="2026-01-02"):
    return {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0",
            "cuda": "13.0", "date": date, "rows": rows, "missing": [], "failed": [], "runs": [{}]}


def _row(impl, cell, **shape):
    values = dict(B=64, H=512, T=512, dtype="bfloat16", mode="train")
    values.update(shape)
    return {"impl": impl, "cell": cell, **values, "ms": 10.0, "us_per_step": 19.5,
            "peak_mem_bytes": 1 << 20, "max_rel_err": 1e-3, "ratio_vs_cudnn": 1.5,
            "ratio_vs_eager": 0.01, "compile_s": None, "note": None}


def test_spread_is_shown_and_unsteady_rows_are_flagged():
    steady = dict(_row("cudnn", "lstm"), ms_min=9.8, ms=10.0, ms_max=30.0, unsteady=False)
    shaky = dict(_row("cudnn", "gru"), ms_min=5.0, ms=10.0, ms_max=11.0, unsteady=True)
    table = report.markdown(_document([steady, shaky]))
    assert "| 9.8 / 10 / 30 |" in table
    assert "| 5 / 10 / 11 ⚠ |" in table and table.count("⚠") == 2  # the row and the legend
    assert f"{UNSTEADY_MEDIAN_OVER_MIN}×" in table


def test_the_unsteady_rule():
    limit = UNSTEADY_MEDIAN_OVER_MIN
    assert not unsteady([1.0, 1.0, 1.0, 50.0])            # one slow call: the median holds
    assert unsteady([1.0, 1.01 * limit, 1.02 * limit])   # most calls slow: it does not
    assert not unsteady([1.0, 0.99 * limit, limit])
    assert not unsteady([])


def test_a_rerun_that_moved_is_reported():
    morning = _document([_row("torch-nn", "gru"), _row("torch-nn", "lstm")])
    later = _document([dict(_row("torch-nn", "gru"), ms=827.0), dict(_row("torch-nn", "lstm"),
                                                                      ms=11.0)])
    moved = report.moved(morning, later)
    assert len(moved) == 1 and "torch-nn gru" in moved[0] and "827 ms now" in moved[0]
    assert report.moved(morning, dict(later, date="2026-01-03")) == []


def _allocating_step(sizes):
    """A Prepared whose forward allocates float32 tensors of ``sizes`` elements, the first
    freed before the others are allocated."""
    def forward(x):
        first = torch.empty(sizes[0])
        del first
        return [torch.empty(n) for n in sizes[1:]]
    return Prepared(forward, {})


def test_cpu_peak_memory_counts_what_a_call_holds_at_once():
    before = [torch.empty(1 << 20)]                  # allocated before: never counted
    def call():
        a = torch.empty(1 << 18)                     # 1 MiB
        b = torch.empty(1 << 19)                     # + 2 MiB = 3 MiB, the peak
        del a
        before.clear()                               # a free of older memory lowers nothing
        c = torch.empty(1 << 17)                     # 2.5 MiB
        return b, c
    assert cpu_peak_bytes(call) == 3 << 20
    assert cpu_peak_bytes(lambda: None) is None      # nothing recorded: unknown, not zero
    x = torch.zeros(1)
    # Through the harness's own step: 4 MiB at most either way round.
    for sizes in ([1 << 20, 1 << 10], [1 << 10, 1 << 20]):
        assert peak_memory_bytes(_allocating_step(sizes), x, "forward", CPU) == 4 << 20


# --------------------------------------------------------------------------- the torch loop

def _eval_cell(monkeypatch, family, options):
    """A cell of ``family`` with ``options`` in eval mode: no masks, zoneout's expectation."""
    name = f"test_{family}_eval"
    monkeypatch.setitem(CELLS, name, Cell(family, options, training=False))
    return name


@pytest.mark.parametrize("cell, options", [
    ("ln_lstm", None), ("lstm", None), ("gru", None),
    ("lstm", {"layer_norm": True, "zoneout_cell": 0.2, "zoneout_hidden": 0.1,
              "recurrent_dropout": 0.25}),
    ("gru", {"layer_norm": True, "zoneout": 0.1, "recurrent_dropout": 0.25}),
])
def test_the_loop_computes_fastrnns_math(monkeypatch, cell, options):
    """In float64 the loop and the fastrnn reference agree to rounding, outputs and gradients:
    the same equations on the same weights (eval mode where the cell has regularizers)."""
    if options is not None:
        cell = _eval_cell(monkeypatch, cell, options)
    workload = Workload(cell, 3, 8, 5, "float32", "train")
    params = master_parameters(workload, 0)
    x = input_sets(workload, 1, 1, CPU)[0].double()
    exact = float64_reference(workload, params, x, CPU, seed=0)
    loop = loop_module(workload, params, CPU).double()
    found = errors(step(loop_prepared(loop, params), x, "train"), exact)
    assert set(exact.grads) == {"input"} | set(params)
    assert found["max_rel_err_out"] < 1e-12 and found["max_rel_err_grad"] < 1e-12, found


def test_the_loop_is_the_users_code():
    """torch.nn.LayerNorm modules (gain, no bias, on the gate vectors; gain and bias on the
    cell) and masks from torch's generator, reproducible under torch.manual_seed."""
    workload = Workload("ln_lstm", 2, 8, 3, "float32", "forward")
    loop = loop_module(workload, master_parameters(workload, 0), CPU)
    norms = {name: m for name, m in loop.named_modules() if isinstance(m, nn.LayerNorm)}
    assert sorted(norms) == ["ln_cell", "ln_hh", "ln_ih"]
    assert norms["ln_ih"].bias is None and norms["ln_ih"].normalized_shape == (32,)
    assert norms["ln_cell"].bias is not None and norms["ln_cell"].normalized_shape == (8,)

    regularized = Workload("gru_reg", 2, 8, 3, "float32", "forward")
    prepared = TorchLoop().prepare(regularized, master_parameters(regularized, 0), CPU)
    x = input_sets(regularized, 1, 1, CPU)[0]
    first, again = (seeded_result(prepared, x, "forward", seed=0) for _ in range(2))
    other = seeded_result(prepared, x, "forward", seed=1)
    assert torch.equal(first.outputs[0], again.outputs[0])
    assert not torch.equal(first.outputs[0], other.outputs[0])
    assert TorchLoop().not_compared(regularized) is not None
    assert TorchLoop().not_compared(workload) is None


def test_the_loop_runs_the_regularized_and_layer_norm_cells_only():
    assert set(TorchLoop.cells) == {"ln_lstm", "ln_lstm_zo", "gru_reg", "ln_gru", "ln_lstm_rs",
                                    "ln_gru_rs"}
    jobs, _ = suite.plan(build_grid(PRESETS["cpu"]), [TorchLoop(), TorchNN(CPU)], CPU)
    assert {j.workload.cell for j in jobs if j.impl.name == "torch-loop"} == {"ln_lstm_zo",
                                                                               "gru_reg"}


# ------------------------------------------------------------------------- plot and progress

def test_the_cpu_grid_gives_every_plotted_line_more_than_two_points():
    workloads = build_grid(PRESETS["cpu"])
    rows = [{"impl": "x", **w.__dict__} for w in workloads]
    axis, fixed = report.plot_axis(rows)
    assert axis == "H" and set(fixed) == {"T", "B"}
    for cell in CPU_CELLS:
        for mode in ("forward", "train"):
            assert len({w.H for w in workloads if (w.cell, w.mode) == (cell, mode)
                        and (w.B, w.T) == (fixed["B"], fixed["T"])}) > 2


def test_the_plot_follows_the_axis_that_varies():
    rows = [dict(_row("cudnn", "lstm"), T=t) for t in (128, 256, 512)]
    assert report.plot_axis(rows) == ("T", {"H": 512, "B": 64})
    # The GPU grid: H against the headline batch, B=64 (each batch has as many rows).
    gpu = [{"impl": "x", **w.__dict__} for w in build_grid(PRESETS["gpu"])]
    assert report.plot_axis(gpu) == ("H", {"T": 512, "B": 64})


def test_progress_lines_say_what_each_row_did(capsys):
    workload = Workload("lstm", 2, 8, 4, "float32", "forward")
    jobs, _ = suite.plan([workload], [ReferenceEager(), TorchNN(CPU)], CPU)
    # No reruns: a row measured again on a loaded machine prints an "[again ...]" line too.
    suite.run_jobs(jobs, dataclasses.replace(FAST, load_retries=0), CPU, progress="lines")
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[")]
    assert len(lines) == len(jobs) == 2
    assert lines[0].startswith("[1/2] ") and "lstm B=2 H=8 T=4 float32 forward: " in lines[0]
    assert " ms median" in lines[0]
    assert suite.progress_style(False) == "lines"
    assert suite.progress_style(True) == "lines"  # pytest's stderr is not a terminal


def test_the_entry_point_speaks_before_its_slow_imports_and_points_inside_the_repository():
    done = subprocess.run([sys.executable, "-m", "bench.run", "--help"], capture_output=True,
                          text=True, cwd=os.path.dirname(BENCH_DIR), timeout=120)
    assert done.returncode == 0
    assert done.stdout.splitlines()[0].startswith("bench.run: importing torch")
    assert "BENCHMARKS" not in done.stdout and "bench/README.md" in done.stdout


def test_bench_refers_to_no_file_outside_the_repository():
    for path in glob.glob(os.path.join(BENCH_DIR, "*.py")) + [os.path.join(BENCH_DIR, "README.md")]:
        text = open(path).read()
        assert "BENCHMARKS" not in text and "SPEC" not in text, path


def test_headline_table_has_the_headline_rows_and_their_floor():
    rows = [_row("fastrnn-triton", "ln_lstm"), _row("cudnn", "lstm"),
            _row("fastrnn-triton", "ln_lstm", H=256)]
    table = report.headline_table(_document(rows))
    assert "NVIDIA H100" in table
    assert table.count("| ln_lstm | train | bfloat16 | 64 | 512 |") == 1
    assert "| lstm | train | bfloat16 | 64 | 512 | 512 | cudnn |" in table
    assert "| 256 |" not in table


def test_cpu_table_puts_each_fused_row_beside_its_alternatives():
    shape = dict(B=16, H=64, T=128, dtype="float32", mode="train")
    rows = [dict(_row("fastrnn-cpu", "ln_lstm_zo", **shape), ms=10.0),
            dict(_row("torch-loop", "ln_lstm_zo", **shape), ms=40.0),
            dict(_row("torch-nn", "lstm", **shape), ms=5.0, loaded=True, load_ratio=1.5),
            dict(_row("fastrnn-cpu", "gru", **dict(shape, H=32)), ms=1.0)]
    table = report.cpu_table(dict(_document(rows), device="cpu x86_64 (2 cores, 1 thread)"))
    assert "cpu x86_64 (2 cores, 1 thread)" in table
    assert ("| RL B=16 T=128 H=64 | ln_lstm_zo | train | 10 | 40 | 5 (loaded 1.5×) | — | 0.25× "
            "| 2.00× |") in table
    assert "H=32" not in table and table.count("fastrnn-cpu") == 1


def test_same_day_runs_merge_and_other_days_do_not(tmp_path):
    first = _document([_row("cudnn", "lstm"), _row("cudnn", "gru")])
    report.write(first, str(tmp_path))
    second = _document([dict(_row("cudnn", "gru"), ms=20.0)])
    paths = report.write(second, str(tmp_path))
    merged = json.load(open(paths["json"]))
    assert sorted((r["cell"], r["ms"]) for r in merged["rows"]) == [("gru", 20.0), ("lstm", 10.0)]
    paths = report.write(second, str(tmp_path), fresh=True)
    assert len(json.load(open(paths["json"]))["rows"]) == 1
    assert os.path.basename(paths["json"]) == "nvidia-h100-80gb-hbm3-2026-01-02.json"


class _Killed(BaseException):
    """A time limit's kill, as far as the run can tell: nothing after it runs."""


def test_a_run_killed_midway_keeps_the_rows_it_finished(tmp_path, monkeypatch):
    measure = ReferenceEager.measure
    calls = []

    def killed_at_the_second(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise _Killed
        return measure(self, *args)

    monkeypatch.setattr(ReferenceEager, "measure", killed_at_the_second)
    _fake_calibration(monkeypatch, [1.0])   # a rerun for load would shift the count
    with pytest.raises(_Killed):
        run.main(TINY + ["--out-dir", str(tmp_path), "--device", "cpu"])
    files = sorted(os.listdir(tmp_path))
    assert [os.path.splitext(f)[1] for f in files] == [".json", ".md"]   # the plot comes last
    with open(tmp_path / files[0]) as f:
        document = json.load(f)
    rows_before = len(document["rows"])
    assert rows_before >= 1 and not document["failed"]
    assert re.fullmatch(rf"{rows_before} of \d+ rows written", document["runs"][-1]["unfinished"])
    assert "| reference-eager |" in (tmp_path / files[1]).read_text()

    monkeypatch.setattr(ReferenceEager, "measure", measure)
    assert run.main(TINY + ["--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    with open(tmp_path / files[0]) as f:
        document = json.load(f)
    assert "unfinished" in document["runs"][0] and "unfinished" not in document["runs"][-1]
    assert len(document["runs"]) == 2 and len(document["rows"]) > rows_before


# --------------------------------------------------------------------------- load detection

def test_the_load_rule():
    assert not loaded([1.0, 1.0], 1.0, 1.3)
    assert loaded([1.0, 1.31], 1.0, 1.3)              # slow after the row
    assert loaded([1.4, 1.0], 1.0, 1.3)               # slow before it
    assert not loaded([1.3, 1.29], 1.0, 1.3)          # at the threshold: not
    assert load_ratio([2.0, 3.0], 1.5) == 2.0         # the slower of the two
    assert load_ratio([None, 2.0], 1.0) == 2.0        # the first row of a run has no "before"
    # No calibration (CUDA): unknown, never loaded.
    assert load_ratio([None, None], None) is None and not loaded([None, None], None, 1.3)


def test_the_calibration_is_a_fixed_workload_that_leaves_the_masks_alone():
    state = torch.get_rng_state()
    first, again = measure.calibration_workload(), measure.calibration_workload()
    assert torch.equal(first, again)
    # Neither vanished (denormals) nor saturated (tanh's flat tails): a real computation.
    assert 1e-3 < first.abs().mean() < 0.9 and torch.isfinite(first).all()
    assert measure.calibration_ms() > 0
    assert torch.equal(torch.get_rng_state(), state)


def _fake_calibration(monkeypatch, script):
    """Replaces the calibration: each call returns the next time of ``script`` in ms, the last
    one from then on.  Returns the list of the times it returned."""
    script, returned = list(script), []

    def fake():
        returned.append(script.pop(0) if len(script) > 1 else script[0])
        return returned[-1]
    monkeypatch.setattr(measure, "calibration_ms", fake)
    return returned


class _Counted(Implementation):
    """Times nothing real: its n-th measurement is one call of n ms, so a row tells which try
    it kept."""
    name = "counted"
    cells = ("lstm",)

    def __init__(self):
        self.calls = 0

    def measure(self, workload, params, inputs, settings, device):
        self.calls += 1
        return Measurement([float(self.calls)], None, None)


def _run_counted(workloads, progress="off", settings=FAST, **options):
    impl = _Counted()
    jobs, _ = suite.plan(workloads, [impl], CPU)
    rows, failed = suite.run_jobs(jobs, settings, CPU, progress=progress, **options)
    assert not failed
    return impl, rows


TINY_LSTM = Workload("lstm", 2, 8, 4, "float32", "forward")


def test_a_row_loaded_once_is_measured_again_and_not_flagged(monkeypatch, capsys):
    # Before the row 1.0 ms, after it 2.0 (loaded); before the retry 1.0, after 1.0.
    _fake_calibration(monkeypatch, [1.0, 2.0, 1.0, 1.0])
    impl, rows = _run_counted([TINY_LSTM], progress="lines")
    assert impl.calls == 2
    (row,) = rows
    assert row["ms"] == 2.0 and row["tries"] == 2           # the second try is kept
    assert not row["loaded"] and row["load_ratio"] == 1.0
    assert row["calibration_ms"] == [1.0, 1.0]
    assert "try 2: the machine was loaded before" in capsys.readouterr().out


def test_a_row_that_stays_loaded_is_flagged_with_its_quietest_try(monkeypatch):
    # Tries: [1, 3], [2, 2], [2.5, 2.5]: all loaded against the quietest (1.0); the second
    # has the quietest calibrations and is kept.
    calls = _fake_calibration(monkeypatch, [1.0, 3.0, 2.0, 2.0, 2.5, 2.5])
    impl, rows = _run_counted([TINY_LSTM])
    assert impl.calls == 3 == 1 + Settings().load_retries and len(calls) == 6
    (row,) = rows
    assert row["loaded"] and row["tries"] == 3 and row["ms"] == 2.0
    assert row["calibration_ms"] == [2.0, 2.0] and row["load_ratio"] == 2.0


def test_load_retries_bound_the_reruns(monkeypatch):
    _fake_calibration(monkeypatch, [1.0, 2.0])
    impl, rows = _run_counted([TINY_LSTM], settings=Settings(
        warmup=0, min_repeats=1, max_repeats=1, input_sets=2, load_retries=0))
    assert impl.calls == 1 and rows[0]["loaded"] and rows[0]["tries"] == 1


TWO_ROWS = [TINY_LSTM, dataclasses.replace(TINY_LSTM, H=16)]


def test_rows_judged_against_a_noisier_reference_are_measured_again_at_the_end(monkeypatch,
                                                                                capsys):
    # The run starts loaded (2.0 ms, its quietest so far): the first row looks fine.  After the
    # second the calibration finds 1.0 ms, so the first ran at twice the quiet time; at the end
    # it is measured again (its 4th measurement, on a quiet machine) and replaced.
    _fake_calibration(monkeypatch, [2.0, 2.0, 1.0])
    seen = []
    impl, rows = _run_counted(TWO_ROWS, progress="lines",
                              on_row=lambda rows, failed: seen.append([r["loaded"] for r in rows]))
    assert impl.calls == 4
    assert seen[0] == [False]                  # judged against 2.0 ms when it was written
    assert seen[1] == [True, False]            # the second row's retry found 1.0 ms
    first, second = rows
    assert first["ms"] == 4.0 and first["tries"] == 2 and not first["loaded"]
    assert first["calibration_ms"] == [1.0, 1.0] and first["load_ratio"] == 1.0
    assert first["peak_mem_bytes"] is None and first["repeats"] == 1
    assert second["ms"] == 3.0 and second["tries"] == 2 and not second["loaded"]
    assert seen[-1] == [False, False]
    again = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[again")]
    assert len(again) == 1 and "[again 1/1] counted lstm B=2 H=8" in again[0]


def test_a_row_found_loaded_late_keeps_its_quieter_first_measurement(monkeypatch):
    # As above, but the machine is loaded again (3.0 ms) when the first row is measured again:
    # its first measurement, beside 2.0 ms calibrations, stands, flagged.
    _fake_calibration(monkeypatch, [2.0, 2.0, 1.0, 1.0, 1.0, 3.0])
    impl, rows = _run_counted(TWO_ROWS)
    first = rows[0]
    assert impl.calls == 2 + 1 + 2            # row 1, row 2 twice, row 1's two tries left
    assert first["ms"] == 1.0 and first["calibration_ms"] == [2.0, 2.0]
    assert first["tries"] == 3 and first["loaded"] and first["load_ratio"] == 2.0


def test_without_retries_a_row_found_loaded_late_is_flagged(monkeypatch):
    _fake_calibration(monkeypatch, [2.0, 2.0, 1.0])
    impl, rows = _run_counted(TWO_ROWS, settings=Settings(
        warmup=0, min_repeats=1, max_repeats=1, input_sets=2, load_retries=0))
    assert impl.calls == 2
    assert [r["loaded"] for r in rows] == [True, True]
    assert [r["load_ratio"] for r in rows] == [2.0, 2.0]


def test_no_calibration_and_no_rerun_where_the_monitor_is_off(monkeypatch):
    calls = _fake_calibration(monkeypatch, [1.0, 5.0])
    monitor = LoadMonitor(torch.device("cuda"), 1.3)    # CUDA: never calibrated
    impl, rows = _run_counted([TINY_LSTM], monitor=monitor)
    assert calls == [] and impl.calls == 1
    assert rows[0]["calibration_ms"] is None and rows[0]["load_ratio"] is None
    assert not rows[0]["loaded"] and monitor.describe()["quietest_ms"] is None


def test_loaded_rows_are_flagged_in_the_files_and_the_summary(tmp_path, monkeypatch, capsys):
    _fake_calibration(monkeypatch, [1.0, 2.5])     # quiet once, loaded from the first row on
    assert run.main(["--cells", "lstm"] + TINY[2:] + [
        "--device", "cpu", "--impls", "torch-nn,reference-eager", "--load-retries", "1",
        "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    document = json.load(open(next(tmp_path.glob("*.json"))))
    rows = document["rows"]
    assert len(rows) == 4                           # two impls, two modes
    for row in rows:
        assert row["loaded"] and row["load_ratio"] == 2.5 and row["tries"] == 2
    this_run = document["runs"][-1]
    assert this_run["settings"]["load_retries"] == 1
    assert this_run["calibration"]["quietest_ms"] == 1.0
    assert "4 rows were measured on a loaded machine" in printed
    assert "calibration 2.5× the quietest" in printed
    markdown = next(tmp_path.glob("*.md")).read_text()
    assert markdown.count(" loaded 2.5× |") == 4 and "quietest 1 ms" in markdown


def test_the_table_and_the_plot_mark_loaded_rows(tmp_path):
    quiet = dict(_row("cudnn", "lstm"), ms_min=9.8, ms=10.0, ms_max=11.0, unsteady=False,
                 loaded=False)
    burdened = dict(_row("cudnn", "gru"), ms_min=9.8, ms=10.0, ms_max=11.0, unsteady=True,
                    loaded=True, load_ratio=1.84)
    document = _document([quiet, burdened])
    table = report.markdown(document)
    assert "| 9.8 / 10 / 11 ⚠ loaded 1.84× |" in table and "| 9.8 / 10 / 11 |" in table
    report.plot(document, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------- episode starts (--rl)

def test_torch_nn_on_split_segments_equals_each_segment_run_alone():
    """The RL floor: torch.nn's cell on the packed segments, scattered back to [T, B, H]."""
    from bench.implementations import segments_prepared
    torch.manual_seed(0)
    module = nn.GRU(3, 4)
    resets = torch.rand(9, 3) < 0.3
    resets[0, 0] = resets[5, 1] = True
    x = torch.randn(9, 3, 3)
    out = segments_prepared(module, resets).forward(x)[0]
    for b in range(3):
        starts = [0] + [t for t in range(1, 9) if resets[t, b]] + [9]
        for start, end in zip(starts, starts[1:]):
            expected, _ = module(x[start:end, b:b + 1])
            torch.testing.assert_close(out[start:end, b], expected[:, 0])


def test_the_rl_grid_runs_each_cell_with_and_without_resets_into_its_own_files(tmp_path):
    from bench.data import episode_starts
    grid = build_grid(PRESETS["rl"])
    cells = {w.cell for w in grid}
    assert cells == {"ln_lstm", "ln_lstm_rs", "ln_gru", "ln_gru_rs"}
    assert {(w.B, w.H, w.T) for w in grid} == {(64, 128, 128)}
    with_resets = next(w for w in grid if w.cell == "ln_lstm_rs")
    starts = episode_starts(with_resets, torch.device("cpu"))
    assert starts.shape == (128, 64) and 0.01 < starts.float().mean() < 0.06
    assert torch.equal(starts, episode_starts(with_resets, torch.device("cpu")))
    assert episode_starts(next(w for w in grid if w.cell == "ln_lstm"), torch.device("cpu")) is None
    assert CELLS["ln_lstm_rs"].baseline == "lstm_rs"
    document = {"device": "cpu x86_64 (2 cores, 1 thread)", "date": "2026-12-07", "grid": "rl"}
    assert report.file_stem(document) == "cpu-x86-64-2-cores-1-thread-rl-2026-12-07"
