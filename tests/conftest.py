import pytest
import torch


# The quick tier runs every code path at least once. These sweeps run the same paths again over
# more option sets, tilings, dtypes or layouts: only the cases whose parameters the predicate
# keeps stay in the quick tier (test name -> predicate over the case's parameters, labelled by
# ``_label``); the rest are marked slow and run in the exhaustive tier
# (`bash scripts/test.sh --slow`, which CI runs too).
QUICK_CASES = {
    # Tilings of the per-step driver (several splits and batch tiles, a streamed weight, whole
    # blocks without masks) with the GRU's broadest option set; episode starts with every other
    # option (layer norm, regularizers, reverse, lengths) for both cells with several splits
    # and batch tiles.  The persistent kernels' splits,
    # tiles and streamed chunks run in test_interleaved.py, the LSTM's options at the default
    # tiling.
    "test_tiling_variant": lambda p: (
        (p["cell"], p["options"]) == ("gru", "everything_per_gate_reverse")
        and p["variant"] in ("driver_2_splits_2_batch_tiles", "driver_streamed", "whole_blocks")
    ) or (p["variant"] == "driver_2_splits_2_batch_tiles" and p["options"].startswith("resets")),
    # Gradchecks: every option at once (per-gate norm, reverse), the eval path, the projection,
    # lengths and the smallest shape; the other option sets are subsets of these paths.
    # (The per-gate norm backward of the reference is held to the cpu kernels' in float64 by
    # tests/test_cpu_backend.py, whose gradcheck covers it: 10-24 s of gradcheck here.)
    "test_gradcheck_op": lambda p: p["name"] in GRADCHECK_QUICK and (
        p["name"] != "everything_per_gate_reverse"),
    "test_gradcheck_reference": lambda p: p["path"] in GRADCHECK_QUICK,
    "test_every_result_is_written": lambda p: p["_id"] in ("lstm-persistent", "gru-driver"),
    "test_export_with_lengths_runs_in_onnxruntime": lambda p: p["name"] in (
        "gru_zoneout_regularized", "layer_norm_gru_per_gate"),
    "test_module_matches_reference": lambda p: not (
        p["backend"] == "triton" and (p["name"] == "ln_lstm" or p["training"] == "True")),
    # Option sets at the default tiling: those that join several options (every path of each
    # option runs in one of them) and the edge cases (zoneout 1, one step, short tiles, eval).
    "test_each_option_default_tiling": lambda p: p["name"].split("-", 1)[1] in {
        "everything", "everything_per_gate_reverse", "everything_eval", "zoneout_one",
        "one_row_one_step", "tile_shorter_than_T"},
    # The padding values: NaN through every model, and every layout of the layer-norm LSTM;
    # huge and Inf through the layer-norm LSTM (the norms are what they could break).
    "test_padding_reaches_no_output_and_no_gradient": lambda p: (
        p["backend"] == "cpu" or (p["backend"] == "triton" and p["name"] in ("lstm", "ln_gru"))
        or (p["backend"] == "reference" and p["name"] == "ln_lstm" and (
            p["poison"] == "nan" or p["_id"].endswith("tensor-seq_first")))
        or (p["backend"] == "reference" and p["poison"] == "nan"
            and p["_id"].endswith("list-batch_first"))),
    # Persistent splits interleaved: every option group and shape once, each cell in most of
    # them, under the three schedules; the sweep has the rest.
    "test_persistent_splits_match_the_reference": lambda p: p["_id"] in (
        "lstm-plain-streamed_narrow_chunks-round_robin",
        "gru-plain-streamed_narrow_chunks-random_1_memory",
        "lstm-regularized_reverse-2_splits_2_tiles-skewed_2_memory",
        "gru-regularized_reverse-2_splits_2_tiles-random_1_memory",
        "lstm-everything-3_splits-random_1_memory",
        "lstm-everything_per_gate_reverse-2_splits_2_tiles-random_1_memory",
        "gru-everything_eval-3_splits_streamed-random_1_memory") or (
        p["group"].startswith("resets") and p["_id"].endswith("random_1_memory")),
    # Aborts: a partner that never runs (forward), one that stops mid-protocol (backward).
    "test_an_abort_ends_in_the_per_step_rerun": lambda p: p["_id"] in (
        "forward_partner_never_runs-gru", "backward_partner_stops_mid_protocol-lstm"),
    "test_opcheck_forward": lambda p: p["name"] in OPCHECK_QUICK,
    "test_opcheck_backward": lambda p: p["name"] in OPCHECK_QUICK,
    "test_export_runs_in_onnxruntime": lambda p: p["name"] in (
        "lstm", "gru_batch_first_no_bias", "lstm_proj_size", "layer_norm_lstm_proj_zoneout",
        "layer_norm_gru_per_gate", "gru_zoneout_regularized"),
    "test_half_precision": lambda p: "name" not in p or (p["name"], p["dtype"]) in (
        ("gru-everything_per_gate_reverse", "torch.bfloat16"), ("lstm-plain", "torch.float16"),
        ("lstm-everything_per_gate_reverse", "torch.bfloat16")),
    # Episode starts: the reference's gradcheck with every option, and in eval mode.
    "test_reference_gradcheck": lambda p: p["name"] in (
        "lstm-resets_everything_reverse", "gru-resets_eval"),
    # Module-level episode starts under the Triton interpreter (2 bidirectional layers, 10-30 s
    # each): the GRU's gradient isolation and training step; the op-level cases, the bitwise
    # all-False check of tests/test_triton.py and the reference and cpu runs cover the rest.
    "test_no_gradient_crosses_a_reset": lambda p: p["_id"] != "lstm-triton",
    "test_module_equals_reference_in_training": lambda p: p["_id"] != "lstm-triton",
    "test_all_false_resets_are_bitwise_no_resets": lambda p: p.get("backend") != "triton",
    "test_resets_at_padded_steps_are_ignored": lambda p: p.get("backend") != "triton",
    # Inference memory: the cpu backend's for both cells, the reference's mechanism once; the
    # Triton kernels' (tens of interpreted seconds at T = 64) in the exhaustive tier, where
    # test_triton.py's inference cases below stand in: the per-step driver's cell carrier (LSTM
    # with the cell norm), the GRU's cell (one function for both drivers) in eval, the
    # persistent LSTM with episode starts.
    "test_inference_keeps_only_outputs_and_states": lambda p: p["_id"] in (
        "lstm-everything-cpu", "gru-everything-cpu", "gru-everything-reference"),
    "test_inference_hands_the_kernels_no_saved_tensor": lambda p: p["_id"] in (
        "lstm-driver_1_split-everything", "gru-driver_1_split-everything_eval",
        "lstm-persistent_2_batch_tiles-resets_everything_reverse"),
    "test_inference_with_several_splits_and_its_rerun": lambda p: False,
    "test_fused_backend_within_tolerance": lambda p: p["backend"] != "triton" or p["name"] in (
        "lstm-resets_everything_reverse", "gru-resets_everything_reverse",
        "lstm-resets_layer_norm_per_gate", "gru-resets"),
}
# torch.library.opcheck: each cell with every option, in eval mode, and the projection.
OPCHECK_QUICK = {"lstm-everything_per_gate_reverse", "gru-everything_per_gate_reverse",
                 "gru-everything_eval", "lstm-projection_everything_eval"}
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
