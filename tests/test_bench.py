"""The benchmark harness on a tiny CPU grid: result files, their schema, missing implementations,
the accuracy column and the compile budget.  Nothing here asserts a timing."""
from __future__ import annotations

import datetime
import json
import os

import pytest
import torch

from bench import report, run, suite
from bench.compiled import ReferenceCompiled
from bench.grid import Workload
from bench.implementations import ReferenceEager
from bench.measure import Prepared, Settings

TINY = ["--cells", "ln_lstm,gru_reg", "-B", "2", "-H", "8", "-T", "4", "--no-progress",
        "--repeats", "2", "--min-repeats", "1", "--warmup", "0"]
FAST = Settings(warmup=0, min_repeats=1, max_repeats=1, input_sets=2)

# BENCHMARKS.md "result files", plus the fields this suite adds.
DOCUMENT_FIELDS = {"device": str, "torch": str, "triton": (str, type(None)),
                   "cuda": (str, type(None)), "date": str, "rows": list, "missing": list,
                   "failed": list}
NUMBER = (int, float)
MAYBE_NUMBER = (int, float, type(None))
ROW_FIELDS = {"impl": str, "cell": str, "B": int, "H": int, "T": int, "dtype": str, "mode": str,
              "ms": MAYBE_NUMBER, "us_per_step": MAYBE_NUMBER, "peak_mem_bytes": (int, type(None)),
              "max_rel_err": MAYBE_NUMBER, "ratio_vs_cudnn": MAYBE_NUMBER,
              "ratio_vs_eager": MAYBE_NUMBER, "compile_s": MAYBE_NUMBER, "repeats": int}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = run.main(TINY + ["--out-dir", str(out), "--device", "cpu"])
    files = sorted(os.listdir(out))
    with open(out / next(f for f in files if f.endswith(".json"))) as f:
        return code, out, files, json.load(f)


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
        assert row["peak_mem_bytes"] is None  # torch keeps no allocation peak on CPU


def test_every_row_has_its_ratios_and_checked_rows_their_error(smoke):
    rows = smoke[3]["rows"]
    cells = {(r["impl"], r["cell"]) for r in rows}
    # The plain cells are measured for the ratios although only the regularized ones were asked.
    assert {("torch-nn", "lstm"), ("torch-nn", "gru"), ("reference-eager", "ln_lstm"),
            ("reference-eager", "gru_reg")} <= cells
    for row in rows:
        assert row["ratio_vs_cudnn"] is not None, row
        assert row["max_rel_err"] is not None and row["max_rel_err"] < 1e-5, row
        if row["impl"] == "torch-nn":
            assert row["ratio_vs_cudnn"] == 1.0
        if row["impl"] == "reference-eager":
            assert row["ratio_vs_eager"] == 1.0


def test_missing_implementations_are_listed_with_reasons(smoke):
    missing = {m["impl"]: m["reason"] for m in smoke[3]["missing"]}
    for name in ("fastrnn-triton", "fastrnn-cuda", "flashrnn", "haste"):
        if name in ("flashrnn", "haste") and name not in missing:
            continue  # a peer installed on this machine is not missing, only GPU-less
        assert "GPU" in missing[name] or "not importable" in missing[name], missing[name]
    assert not any(r["impl"].startswith("fastrnn-") for r in smoke[3]["rows"])


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
    jobs, _ = suite.plan([workload], [_WrongKernel(), ReferenceEager()], torch.device("cpu"))
    rows, failed = suite.run_jobs(jobs, FAST, torch.device("cpu"), progress=False)
    errors = {r["impl"]: r["max_rel_err"] for r in rows}
    assert not failed
    assert errors["wrong-kernel"] > 5e-3 and errors["reference-eager"] < 1e-6


def test_a_compile_over_budget_is_a_row_that_says_so():
    workload = Workload("lstm", 2, 8, 4, "float32", "forward")
    jobs, _ = suite.plan([workload], [ReferenceCompiled(compile_budget_s=0.01)],
                         torch.device("cpu"))
    rows, failed = suite.run_jobs(jobs, FAST, torch.device("cpu"), progress=False)
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


def test_headline_table_has_the_headline_rows_and_their_floor():
    rows = [_row("fastrnn-triton", "ln_lstm"), _row("cudnn", "lstm"),
            _row("fastrnn-triton", "ln_lstm", H=256)]
    table = report.headline_table(_document(rows))
    assert "NVIDIA H100" in table
    assert table.count("| ln_lstm | train | bfloat16 | 64 | 512 |") == 1
    assert "| lstm | train | bfloat16 | 64 | 512 | 512 | cudnn |" in table
    assert "| 256 |" not in table


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
