"""scripts/gpu_check.sh and its Python stages, checked without a GPU: the plan (stages in order,
hard limits within the 9-minute slot), each stage's listing, and the runners' code paths on the
CPU under the interpreter."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import support

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["env", "smoke", "headline", "bench-a", "bench-a-fp16", "bench-b", "bench-b-bf16",
          "cuda", "barrier"]
needs_interpreter = pytest.mark.skipif(not support.INTERPRET,
                                       reason="the CPU runs need TRITON_INTERPRET=1")


def _run(*command, **env):
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, **env))


def test_dry_run_plans_every_stage_within_the_slot(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    done = _run("bash", "scripts/gpu_check.sh", "--dry-run", str(tmp_path),
                PATH=bin_dir + os.pathsep + os.environ["PATH"])
    assert done.returncode == 0, done.stderr
    plan = (tmp_path / "stages.txt").read_text()
    found = re.findall(r"^== (\S+) \(limit (\d+)s\)", plan, re.M)
    assert [name for name, _ in found] == STAGES
    assert sum(int(limit) for _, limit in found) <= 540
    assert "timeout -s KILL" in (ROOT / "scripts" / "gpu_check.sh").read_text()
    listed = dict(re.findall(r"^(smoke|headline): (\d+) of \2 listed", done.stdout, re.M))
    assert int(listed["smoke"]) == len(support.variant_runs())
    assert int(listed["headline"]) == 8
    assert "bench.run: ready" in done.stdout and "bench.barrier: ready" in done.stdout
    assert not (tmp_path / "env.log").exists()  # a dry run runs no stage


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_interpreter
def test_smoke_runner_checks_variants_against_the_reference(tmp_path):
    out = tmp_path / "smoke.jsonl"
    done = _run(sys.executable, "tests/gpu_stages.py", "smoke", "--out", str(out),
                "--device", "cpu", "--limit", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _lines(out)
    assert [row["status"] for row in rows] == ["pass", "pass"]
    assert all(row["first_call_s"] > 0 and row["run_s"] > 0 for row in rows)


@needs_interpreter
def test_headline_runner_compares_modules_with_the_float32_reference(tmp_path):
    out = tmp_path / "headline.jsonl"
    done = _run(sys.executable, "tests/gpu_stages.py", "headline", "--out", str(out),
                "--device", "cpu", "--tiny", "--limit", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _lines(out)
    assert [row["status"] for row in rows] == ["pass", "pass"]
    assert all(0 < row["worst_error"] <= row["tolerance"] for row in rows)


@needs_interpreter
def test_barrier_benchmark_runs_its_kernel_and_refuses_several_programs_on_cpu():
    done = _run(sys.executable, "-m", "bench.barrier", "--programs", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["programs"] == 1
    refused = _run(sys.executable, "-m", "bench.barrier", "--programs", "1,8", "--device", "cpu")
    assert refused.returncode == 2 and "only --programs 1" in refused.stderr
