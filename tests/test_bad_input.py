"""docs/api.md, "Errors": every bad argument raises ValueError/TypeError naming it and the
expected value, before any kernel runs (the ops are patched to fail the test if they are
reached)."""
from __future__ import annotations

import pytest
import torch

import fastrnn
from fastrnn import backends


@pytest.fixture(autouse=True)
def no_kernel_runs(monkeypatch):
    """Any call of the recurrence ops during a bad-input test is itself a failure."""
    def reached(*args, **kwargs):
        raise AssertionError("a kernel ran before the bad input was rejected")

    for name in ("reference", "cpu"):
        monkeypatch.setattr(backends.get(name), "forward", reached)
    monkeypatch.setattr(backends.get("native"), "run", reached)


def lstm(**kwargs):
    return fastrnn.LSTM(3, 4, num_layers=2, **kwargs)


def gru(**kwargs):
    return fastrnn.GRU(3, 4, num_layers=2, **kwargs)


def x(*shape, **kwargs):
    return torch.randn(*(shape or (5, 2, 3)), **kwargs)


def test_wrong_input_rank():
    with pytest.raises(ValueError, match=r"input must have 3 dimensions.*got shape \(5,\)"):
        lstm()(torch.randn(5))
    with pytest.raises(ValueError, match="input must have 3 dimensions"):
        gru()(torch.randn(5, 2, 3, 1))


def test_feature_size_differs_from_input_size():
    with pytest.raises(ValueError, match=r"input.size\(-1\) must be equal to input_size=3, got 7"):
        lstm()(x(5, 2, 7))


def test_integer_input():
    with pytest.raises(TypeError, match="input must be a floating point tensor"):
        gru()(torch.ones(5, 2, 3, dtype=torch.int64))


SPARSE_ARGUMENTS = {
    "input": lambda make: ((x().to_sparse(),), {}),
    "input_csr_unbatched": lambda make: ((x(5, 3).to_sparse_csr(),), {}),
    "hx": lambda make: ((x(), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4).to_sparse())
                         if make is lstm else torch.zeros(2, 2, 4).to_sparse()), {}),
    "lengths": lambda make: ((x(),), {"lengths": torch.tensor([5, 2]).to_sparse()}),
}


@pytest.mark.parametrize("make", [lstm, gru], ids=["lstm", "gru"])
@pytest.mark.parametrize("argument", list(SPARSE_ARGUMENTS))
def test_sparse_tensors(make, argument):
    """Sparse layouts have no strides: refused by name, not deep inside a layer."""
    args, kwargs = SPARSE_ARGUMENTS[argument](make)
    name = {"hx": r"hx(\[1\] \(c_0\))?", "input_csr_unbatched": "input"}.get(argument, argument)
    with pytest.raises(TypeError, match=rf"^{name} must be a dense \(strided\) tensor, got "
                                        r"layout torch.sparse_(coo|csr).*to_dense"):
        make()(*args, **kwargs)


@pytest.mark.parametrize("make", [lstm, gru], ids=["lstm", "gru"])
def test_hx_of_wrong_shape(make):
    module = make()
    bad = torch.zeros(2, 3, 4)       # batch 3 where the input has 2; layers*directions = 2
    hx = (bad, torch.zeros(2, 2, 4)) if make is lstm else bad
    with pytest.raises(ValueError, match=r"must have shape \(2, 2, 4\), got \(2, 3, 4\)"):
        module(x(), hx)


def test_hx_of_wrong_shape_unbatched():
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 4\), got \(2, 1, 4\)"):
        gru()(x(5, 3), torch.zeros(2, 1, 4))


def test_lstm_hx_not_a_pair():
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        lstm()(x(), torch.zeros(2, 2, 4))


@pytest.mark.parametrize("make", [lstm, gru], ids=["lstm", "gru"])
def test_hx_of_wrong_dtype(make):
    bad = torch.zeros(2, 2, 4, dtype=torch.float64)
    hx = (torch.zeros(2, 2, 4), bad) if make is lstm else bad
    with pytest.raises(TypeError,
                       match=r"must have the input's dtype torch.float32, got torch.float64"):
        make()(x(), hx)


def test_hx_on_wrong_device():
    bad = torch.zeros(2, 2, 4, device="meta")
    with pytest.raises(ValueError, match=r"hx must be on the input's device cpu, got meta"):
        gru()(x(), bad)


def test_input_and_parameters_of_different_dtypes():
    with pytest.raises(TypeError, match=r"input must have the parameters' dtype torch.float32, "
                                        r"got torch.float64"):
        lstm()(x(dtype=torch.float64))


def test_input_and_parameters_on_different_devices():
    with pytest.raises(ValueError, match=r"input must be on the parameters' device cpu, got meta"):
        gru()(x(device="meta"))


@pytest.mark.gpu
def test_cuda_input_with_cpu_parameters():
    with pytest.raises(ValueError, match="input must be on the parameters' device cpu"):
        lstm()(x(device="cuda"))


@pytest.mark.parametrize("lengths", [[5, 5, 5], torch.tensor([[5, 5]]), torch.tensor([5])],
                         ids=["list_too_long", "tensor_2d", "tensor_too_short"])
def test_lengths_of_wrong_shape(lengths):
    with pytest.raises(ValueError, match=r"lengths must have (shape \(2,\)|2 entries)"):
        lstm()(x(), lengths=lengths)


@pytest.mark.parametrize("lengths", [torch.tensor([5.0, 2.0]), torch.tensor([True, True]),
                                     [5.0, 2], "52"],
                         ids=["float_tensor", "bool_tensor", "float_in_list", "string"])
def test_lengths_of_wrong_dtype(lengths):
    with pytest.raises(TypeError, match="lengths must"):
        gru()(x(), lengths=lengths)


@pytest.mark.parametrize("lengths", [[0, 3], [6, 3], torch.tensor([2, 0]), torch.tensor([9, 1])],
                         ids=["zero", "beyond_T", "tensor_zero", "tensor_beyond_T"])
def test_lengths_out_of_range(lengths):
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\]"):
        lstm()(x(), lengths=lengths)


def test_lengths_on_the_meta_device():
    """Meta lengths hold no values to check (a meta input may take them: shapes only)."""
    with pytest.raises(ValueError, match=r"lengths must hold values.*got a tensor on meta"):
        lstm()(x(), lengths=torch.tensor([5, 2], device="meta"))


def test_lengths_with_packed_or_unbatched_input():
    packed = torch.nn.utils.rnn.pack_padded_sequence(x(), [5, 3])
    with pytest.raises(ValueError, match="lengths must be None for a PackedSequence"):
        gru()(packed, lengths=[5, 3])
    with pytest.raises(ValueError, match="lengths must be None for unbatched"):
        gru()(x(5, 3), lengths=[5])


@pytest.mark.parametrize("name", ["recurrent_dropout", "candidate_dropout", "dropconnect"])
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_probabilities_out_of_range(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\), got"):
        fastrnn.LSTM(3, 4, **{name: value})


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_inter_layer_dropout_out_of_range(value):
    """dropout is torch.nn's option and takes what torch.nn takes: [0, 1]."""
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\], got"):
        fastrnn.LSTM(3, 4, num_layers=2, dropout=value)
    with pytest.raises(ValueError):
        torch.nn.LSTM(3, 4, num_layers=2, dropout=value)
    assert fastrnn.LSTM(3, 4, num_layers=2, dropout=1.0).dropout == 1.0


@pytest.mark.parametrize("value", [-1, 4, 5])
def test_proj_size_out_of_range(value):
    with pytest.raises(ValueError, match=rf"proj_size must be .*got {value}"):
        fastrnn.LSTM(3, 4, proj_size=value)
    with pytest.raises(ValueError):
        torch.nn.LSTM(3, 4, proj_size=value)


def test_proj_size_of_wrong_type():
    with pytest.raises(TypeError, match=r"proj_size must be an int, got 2.0"):
        fastrnn.LSTM(3, 4, proj_size=2.0)


def test_projection_on_a_backend_without_it(monkeypatch):
    """A backend whose kernels lack a feature refuses it by name before anything runs (Triton
    takes CPU tensors under the interpreter: the refusal is then the feature's)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match=r"backend='triton' cannot run proj_size > 0"):
        fastrnn.LSTM(3, 4, proj_size=2, backend="triton")(x())


def test_fastrnn_options_on_the_native_backend():
    with pytest.raises(ValueError, match=r"backend='native' runs torch.nn's cells only"):
        fastrnn.LSTM(3, 4, zoneout_cell=0.1, backend="native")(x())
    with pytest.raises(ValueError, match=r"backend='native' runs torch.nn's cells only"):
        fastrnn.GRU(3, 4, layer_norm=True, backend="native")(x())


@pytest.mark.parametrize("make,name", [(fastrnn.LSTM, "zoneout_cell"),
                                       (fastrnn.LSTM, "zoneout_hidden"), (fastrnn.GRU, "zoneout")])
def test_zoneout_may_be_one_but_not_more(make, name):
    make(3, 4, **{name: 1.0})
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\], got 1.01"):
        make(3, 4, **{name: 1.01})
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\], got -0.5"):
        make(3, 4, **{name: -0.5})


def test_probability_of_wrong_type():
    with pytest.raises(TypeError, match=r"zoneout must be a float in \[0, 1\], got '0.1'"):
        fastrnn.GRU(3, 4, zoneout="0.1")


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, -2])
def test_non_positive_sizes(name, value):
    sizes = {"input_size": 3, "hidden_size": 4, "num_layers": 1, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be a positive int, got {value}"):
        fastrnn.GRU(**sizes)


def test_non_integer_size():
    with pytest.raises(TypeError, match=r"hidden_size must be a positive int, got 4.0"):
        fastrnn.LSTM(3, 4.0)


@pytest.mark.parametrize("value", [4.0, True, "4"], ids=["float", "bool", "str"])
def test_ln_groups_must_be_an_int(value):
    with pytest.raises(TypeError, match=rf"ln_groups must be a positive int, got {value!r}"):
        fastrnn.LSTM(3, 4, layer_norm=True, ln_groups=value)


def test_ln_groups_must_be_one_or_gate_count():
    with pytest.raises(ValueError, match=r"ln_groups must be one of \(1, 4\), got 3"):
        fastrnn.LSTM(3, 4, layer_norm=True, ln_groups=3)
    with pytest.raises(ValueError, match=r"ln_groups must be one of \(1, 3\), got 4"):
        fastrnn.GRU(3, 4, layer_norm=True, ln_groups=4)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'reference', 'cpu', "
                                         r"'triton', 'cuda', 'native'\), got 'cudnn'"):
        fastrnn.LSTM(3, 4, backend="cudnn")


def test_dtype_unsupported_by_backend():
    module = fastrnn.GRU(3, 4, backend="triton", dtype=torch.float64)
    with pytest.raises(ValueError, match=r"backend='triton' cannot run torch.float64"):
        module(x(dtype=torch.float64))


def test_triton_on_cpu_without_the_interpreter_is_a_value_error(monkeypatch):
    """Every "this backend cannot run this here" is a ValueError (docs/api.md, "Errors")."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    module = fastrnn.LSTM(3, 4, backend="triton")
    with pytest.raises(ValueError, match=r"backend='triton' (cannot run torch.float32 tensors "
                                         r"on cpu: .*TRITON_INTERPRET=1|is not available)"):
        module(x())


def test_forget_bias_must_be_a_number():
    with pytest.raises(TypeError, match="forget_bias must be a finite float, got 'one'"):
        fastrnn.LSTM(3, 4, forget_bias="one")


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_forget_bias_must_be_finite(value):
    with pytest.raises(ValueError, match="forget_bias must be a finite float"):
        fastrnn.LSTM(3, 4, forget_bias=value)


@pytest.mark.parametrize("options", [{}, {"layer_norm": True}], ids=["native", "fused"])
def test_the_guard_catches_a_kernel_call(options):
    """The autouse guard is live: a valid call does reach the (patched) kernel."""
    with pytest.raises(AssertionError, match="a kernel ran"):
        lstm(**options)(x())


@pytest.mark.parametrize("cls", [fastrnn.LSTM, fastrnn.GRU])
def test_zero_time_steps(cls):
    with pytest.raises(ValueError, match="input must have at least one time step"):
        cls(3, 4)(torch.randn(0, 2, 3))
