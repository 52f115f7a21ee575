"""scripts/gpu_check.sh and its Python stages, checked without a GPU: the plan (stages in order,
hard limits within the 9-minute slot), what comes back (at most 8 files, never the Triton
cache), the digests, the prewarm (the launches a stage makes, compiled into the cache), the
runners' code paths on the CPU under the interpreter, and where the CUDA toolkit is found."""
import json
import os
import re
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest

import support
from fastrnn.backends import cuda_build

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["install", "prewarm", "smoke", "headline", "cuda", "check", "bench-a", "bench-b",
          "barrier", "loop-a", "loop-b"]
OUT_FILES = ["summary.txt", "smoke.jsonl", "headline.jsonl", "check.json", "bench.json",
             "bench.md", "barrier.json", "logs.tar.gz"]
needs_interpreter = pytest.mark.skipif(not support.INTERPRET,
                                       reason="the CPU runs need TRITON_INTERPRET=1")


def _run(*command, **env):
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, **env))


def _script(*arguments, work):
    bin_dir = str(Path(sys.executable).parent)
    return _run("bash", "scripts/gpu_check.sh", *arguments, GPU_CHECK_WORK=str(work),
                PATH=bin_dir + os.pathsep + os.environ["PATH"])


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------------------- the script

def test_dry_run_plans_every_stage_within_the_slot(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = _script("--dry-run", str(out), work=work)
    assert done.returncode == 0, done.stderr
    found = re.findall(r"^== (\S+) \(limit (\d+)s\)", done.stdout, re.M)
    assert [name for name, _ in found] == STAGES
    total = sum(int(limit) for _, limit in found)
    assert total <= 540
    assert re.search(r"^== cuda-build \(in the background", done.stdout, re.M)
    back = re.search(rf"^== limits: {total} s in all; back in \S+: (.*)$", done.stdout, re.M)
    assert back and back.group(1).split() == OUT_FILES
    assert "timeout -s KILL" in (ROOT / "scripts" / "gpu_check.sh").read_text()
    listed = dict(re.findall(r"^(smoke|headline): (\d+) of \2 listed", done.stdout, re.M))
    assert int(listed["smoke"]) == len(support.variant_runs())
    assert int(listed["headline"]) == 8
    assert "bench: ready" in done.stdout and "bench.barrier: ready" in done.stdout
    # A dry run runs no stage and leaves only the plan in OUT.
    assert os.listdir(out) == ["summary.txt"]
    assert not (work / "logs" / "install.log").exists()


def test_out_receives_the_fixed_files_only(tmp_path):
    """--collect (also run after every stage): the results under their fixed names, the logs in
    one tarball, the Triton cache never."""
    out, work = tmp_path / "out", tmp_path / "work"
    files = {"summary.txt": "plan", "smoke.jsonl": "{}\n", "headline.jsonl": "{}\n",
             "check.json": "{}", "bench/nvidia-h100-2026-01-02.json": '{"rows": []}',
             "bench/nvidia-h100-2026-01-02.md": "# table", "bench/nvidia-h100-2026-01-02.png": "",
             "barrier/barrier-nvidia-h100-2026-01-02.json": "[]",
             "barrier/barrier-nvidia-h100-2026-01-02.md": "",
             **{f"logs/{name}.log": name for name in STAGES},
             **{f"logs/prewarm-{i}.jsonl": "{}\n" for i in range(16)},
             **{f"triton-cache/{i:03}/kernel.cubin": "" for i in range(200)}}
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    done = _script("--collect", str(out), work=work)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == sorted(OUT_FILES)
    assert (out / "bench.json").read_text() == '{"rows": []}'
    assert (out / "bench.md").read_text() == "# table"
    with tarfile.open(out / "logs.tar.gz") as packed:
        names = packed.getnames()
    assert "./logs/prewarm-15.jsonl" in names and "./bench/nvidia-h100-2026-01-02.png" in names
    assert not [name for name in names if "triton-cache" in name]


def _summary(*arguments):
    done = _run(sys.executable, "tests/gpu_stages.py", "summary", *arguments)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_digests_count_and_name_the_first_error_of_each_kind(tmp_path):
    rows = [{"run": "a", "status": "pass", "of": 5}, {"run": "b", "status": "fail", "of": 5,
                                                      "error": "AssertionError: out of bound\nx"},
            {"run": "c", "status": "fail", "of": 5, "error": "AssertionError: out of bound"},
            {"run": "d", "status": "pass", "of": 5,
             "warnings": ["RuntimeWarning: fastrnn: the persistent Triton kernel stopped"]}]
    (tmp_path / "smoke.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"run": "e", "sta')  # killed mid-line
    text = _summary(str(tmp_path / "smoke.jsonl"))
    assert "smoke.jsonl: 4 of 5 done: 2 fail, 2 pass" in text
    assert "FAIL x2 (first: b): AssertionError: out of bound" in text
    assert "1 runs warned, first (d): RuntimeWarning: fastrnn: the persistent" in text
    for shard in range(2):
        (tmp_path / f"prewarm-{shard}.jsonl").write_text(
            json.dumps({"run": "k", "status": "pass", "of": 3, "compile_s": 2.0}) + "\n")
    assert "prewarm-*.jsonl: 2 of 6 done: 2 pass; 4 s compiling" in _summary(
        str(tmp_path / "prewarm-*.jsonl"))
    shape = {"cell": "gru_reg", "B": 16, "H": 768, "T": 1024, "dtype": "float16", "mode": "train"}
    bench = {"rows": [{"impl": "fastrnn-triton", **shape, "ms": 2.048, "ratio_vs_cudnn": 0.5,
                       "max_rel_err": 1e-3},
                      {"impl": "torch-loop", **shape, "ms": 204.8, "ratio_vs_cudnn": None}],
             "failed": [{"impl": "cudnn", "cell": "lstm", "dtype": "float16", "mode": "train",
                         "error": "RuntimeError: boom"}],
             "runs": [{"unfinished": "2 of 9 rows written"}]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    text = _summary(str(tmp_path / "bench.json"))
    assert "2 rows, 1 failed (2 of 9 rows written)" in text
    assert re.search(r"fastrnn-triton +gru_reg .* 2 us/step +x0\.5 cuDNN +x0\.01 loop "
                     r"+err 1\.0e-03", text)
    assert "RuntimeError: boom" in text
    assert "fastrnn-triton" not in _summary("--brief", str(tmp_path / "bench.json"))
    assert "missing.json: not written" in _summary(str(tmp_path / "missing.json"))


def test_bench_warnings_of_fastrnn_are_collected_and_others_shown():
    from bench.run import fastrnn_warnings

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with fastrnn_warnings() as caught:
            warnings.warn("fastrnn: the persistent Triton forward kernel stopped", RuntimeWarning)
            warnings.warn("something else", UserWarning)
    assert caught == ["RuntimeWarning: fastrnn: the persistent Triton forward kernel stopped"]
    assert [str(w.message) for w in shown] == ["something else"]


# ------------------------------------------------------------------------------ the prewarm

@pytest.mark.slow  # a GPU stage's runner; the dry run and smoke runner stay quick
def test_prewarm_compiles_each_launch_of_a_stage_into_the_cache(tmp_path):
    out, cache = tmp_path / "prewarm.jsonl", tmp_path / "cache"
    done = _run(sys.executable, "tests/gpu_stages.py", "prewarm", "--device", "cpu",
                "--stages", "smoke", "--limit", "1", "--out", str(out),
                TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(cache))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _lines(out)
    assert [row["status"] for row in rows] == ["pass", "pass"]   # its forward and backward
    assert all(row["sm_count"] == 132 and row["compile_s"] > 0 for row in rows)
    assert len(os.listdir(cache)) >= 2


@pytest.mark.slow  # a GPU stage's runner; the dry run and smoke runner stay quick
def test_prewarm_shards_split_the_launches(tmp_path):
    def listed(shard):
        out = tmp_path / f"{shard.replace('/', 'of')}.jsonl"
        done = _run(sys.executable, "tests/gpu_stages.py", "prewarm", "--device", "cpu",
                    "--stages", "smoke", "--limit", "6", "--dry-run", "--shard", shard,
                    "--out", str(out), TRITON_INTERPRET="0")
        assert done.returncode == 0, done.stdout + done.stderr
        return [(row["run"], row["status"]) for row in _lines(out)]

    whole, first, second = listed("0/1"), listed("0/2"), listed("1/2")
    assert len(whole) > 6 and {status for _, status in whole} == {"listed"}
    assert sorted(first + second) == sorted(whole) and first and second


@pytest.mark.slow  # a GPU stage's runner; the dry run and smoke runner stay quick
def test_recorded_steps_give_the_cache_keys_of_the_stages_steps():
    """prewarm records the headline and bench runs at a short T: the kernels it compiles are
    those the full-length runs look up (T=512 and T=16 specialize alike, T=40 and T=17)."""
    code = """
import sys
sys.argv = ["gpu_stages"]
sys.path.insert(0, "tests")
import torch
import gpu_stages as g
from bench import static
cpu = torch.device("cpu")
def keys(part, run, recording):
    with g.recorded_launches(cpu, 132) as recorded:
        part(run, cpu, recording=recording)
    return sorted(static.cache_key(*static.launch_source(k, a, kw)) for k, _, a, kw in recorded)
for steps in (40, 32):
    run = ("ln_lstm", 5, 24, steps, torch.bfloat16)
    assert g.recorded_steps(steps) < steps
    assert keys(g.headline_triton, run, False) == keys(g.headline_triton, run, True), steps
workload = g.bench_runs(((5, 24, 48, torch.float16),))[0][1]
assert keys(g.bench_triton, workload, False) == keys(g.bench_triton, workload, True)
print("same keys")
"""
    done = _run(sys.executable, "-c", code, TRITON_INTERPRET="0")
    assert done.returncode == 0 and "same keys" in done.stdout, done.stdout + done.stderr


# ------------------------------------------------------------------------------ the runners

@needs_interpreter
def test_smoke_runner_checks_variants_against_the_reference(tmp_path):
    out = tmp_path / "smoke.jsonl"
    done = _run(sys.executable, "tests/gpu_stages.py", "smoke", "--out", str(out),
                "--device", "cpu", "--limit", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _lines(out)
    assert [row["status"] for row in rows] == ["pass", "pass"]
    assert all(row["first_call_s"] > 0 and row["run_s"] > 0 for row in rows)


@pytest.mark.slow  # a GPU stage's runner; the dry run and smoke runner stay quick
@needs_interpreter
def test_headline_runner_compares_modules_with_the_references(tmp_path):
    out = tmp_path / "headline.jsonl"
    done = _run(sys.executable, "tests/gpu_stages.py", "headline", "--out", str(out),
                "--device", "cpu", "--tiny", "--limit", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _lines(out)
    assert [row["status"] for row in rows] == ["pass", "pass"]
    assert all(0 < row["worst_error"] <= row["bound"] for row in rows)


@pytest.mark.slow  # a GPU stage's runner; the dry run and smoke runner stay quick
@needs_interpreter
def test_barrier_benchmark_runs_its_kernel_and_refuses_several_programs_on_cpu():
    done = _run(sys.executable, "-m", "bench.barrier", "--programs", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["programs"] == 1
    refused = _run(sys.executable, "-m", "bench.barrier", "--programs", "1,8", "--device", "cpu")
    assert refused.returncode == 2 and "only --programs 1" in refused.stderr


# ------------------------------------------------------------------------------- CUDA_HOME

def _toolkit(root: Path, library="lib64/libcudart.so") -> Path:
    for name in ("bin/nvcc", library):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


def test_cuda_home_is_not_the_directory_of_an_nvcc_wrapper(tmp_path):
    local = tmp_path / "usr" / "local"
    (local / "bin").mkdir(parents=True)
    (local / "bin" / "nvcc").write_text("#!/bin/sh\nexec /usr/local/cuda/bin/nvcc \"$@\"\n")
    toolkit = _toolkit(local / "cuda-13.0")
    (local / "cuda").symlink_to(toolkit)
    found = cuda_build.find_cuda_home({"PATH": str(local / "bin")}, roots=[str(local)],
                                      site_dirs=[])
    assert found == str(local / "cuda")


def test_cuda_home_follows_a_linked_nvcc_and_knows_other_layouts(tmp_path):
    toolkit = _toolkit(tmp_path / "opt" / "nvidia" / "cuda",
                       "targets/x86_64-linux/lib/libcudart.so")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").symlink_to(toolkit / "bin" / "nvcc")
    assert cuda_build.find_cuda_home({}, nvcc=str(tmp_path / "bin" / "nvcc"), roots=[],
                                     site_dirs=[]) == str(toolkit)
    site = tmp_path / "site-packages"
    wheel = _toolkit(site / "nvidia" / "cu13", "lib/libcudart.so")
    assert cuda_build.find_cuda_home({}, nvcc="", roots=[], site_dirs=[str(site)]) == str(wheel)


def test_cuda_home_prefers_the_environment_then_the_newest_toolkit(tmp_path):
    assert cuda_build.find_cuda_home({"CUDA_HOME": "/somewhere"}) == "/somewhere"
    assert cuda_build.find_cuda_home({"CUDA_PATH": "/elsewhere"}) == "/elsewhere"
    assert cuda_build.find_cuda_home({}, nvcc="", roots=[str(tmp_path)], site_dirs=[]) is None
    _toolkit(tmp_path / "cuda-12.8")
    (tmp_path / "cuda-12.9" / "bin").mkdir(parents=True)    # no runtime library: skipped
    newest = _toolkit(tmp_path / "cuda-12.10")
    assert cuda_build.find_cuda_home({}, nvcc="", roots=[str(tmp_path)],
                                     site_dirs=[]) == str(newest)


def test_use_cuda_home_tells_torch_where_cuda_home_is_unset(tmp_path, monkeypatch):
    from torch.utils import cpp_extension

    toolkit = _toolkit(tmp_path / "cuda")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local")   # torch's wrong guess
    assert cuda_build.use_cuda_home(nvcc="", roots=[str(tmp_path)], site_dirs=[]) == str(toolkit)
    assert os.environ["CUDA_HOME"] == cpp_extension.CUDA_HOME == str(toolkit)
    monkeypatch.setenv("CUDA_HOME", "/mine")
    cuda_build.use_cuda_home(nvcc="", roots=[str(tmp_path)], site_dirs=[])
    assert os.environ["CUDA_HOME"] == "/mine"
