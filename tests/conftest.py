import pytest
import torch


# The quick tier runs every code path at least once. These sweeps run the same paths again over
# more option sets, tilings, dtypes or layouts: only the cases whose parameters the predicate
# keeps stay in the quick tier (test name -> predicate over the case's parameters, labelled by
# ``_label``); the rest are marked slow and run in the exhaustive tier
# (`bash scripts/test.sh --slow`, which CI runs too).
QUICK_CASES = {
    # Tilings: every tiling with the GRU's broadest option set and with the plain LSTM (the LSTM's
    # options run at the default tiling, and its persistent splits in test_interleaved.py).
    # Episode starts: the per-step driver with several splits and batch tiles, both cells.
    "test_tiling_variant": lambda p: (p["cell"], p["options"]) in {
        ("gru", "everything_per_gate_reverse"), ("lstm", "plain")} or (
        p["options"].startswith("resets") and p["variant"] == "driver_2_splits_2_batch_tiles"),
    # Gradchecks: every option at once (per-gate norm, reverse), the eval path, the projection,
    # lengths and the smallest shape; the other option sets are subsets of these paths.
    "test_gradcheck_op": lambda p: p["name"] in GRADCHECK_QUICK,
    "test_gradcheck_reference": lambda p: p["path"] in GRADCHECK_QUICK,
    "test_half_precision": lambda p: "name" not in p or p["name"].endswith(
        ("everything_per_gate_reverse", "-plain")),
    "test_padding_reaches_no_output_and_no_gradient": lambda p: (
        p["backend"] != "triton" or p["name"] in ("lstm", "ln_gru")),
    "test_every_result_is_written": lambda p: not (p["cell"] == "lstm" and "driver" in p["_id"]),
    "test_export_with_lengths_runs_in_onnxruntime": lambda p: p["name"] in (
        "lstm", "gru_zoneout_regularized", "layer_norm_gru_per_gate"),
    "test_module_matches_reference": lambda p: not (
        p["backend"] == "triton" and (p["name"] == "ln_lstm" or p["training"] == "True")),
}
GRADCHECK_QUICK = {"everything_per_gate_reverse", "everything_eval", "projection_everything_eval",
                   "lengths", "one_row_one_step", "dropconnect"}


def _in_quick_tier(item) -> bool:
    keep = QUICK_CASES.get(item.originalname or item.name)
    if keep is None or not hasattr(item, "callspec"):
        return True
    params = {name: _label(value) for name, value in item.callspec.params.items()}
    return keep(dict(params, _id=item.callspec.id))


def _label(value) -> str:
    """A parameter as QUICK_CASES sees it: strings as they are, classes by name, others by str."""
    if isinstance(value, str):
        return value
    return getattr(value, "__name__", None) or str(value)


@pytest.hookimpl(tryfirst=True)   # before -m deselects by the marks added here
def pytest_collection_modifyitems(config, items):
    for item in items:
        if not _in_quick_tier(item):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))


def pytest_terminal_summary(terminalreporter, config):
    """Under the quick tier (scripts/test.sh's ``-m "not slow"``) say what was left out and how
    to run it, so that a green quick run is not taken for the whole suite.  (Under pytest-xdist
    the workers deselect, so the controller may not know how many.)"""
    if config.getoption("markexpr", "") != "not slow":
        return
    deselected = len(terminalreporter.stats.get("deselected", []))
    left_out = f"{deselected} tests" if deselected else "the tests"
    terminalreporter.write_line(
        f"quick tier: {left_out} of the exhaustive tier were not run; "
        f"`bash scripts/test.sh --slow` runs them (README: how long each tier takes)")
