// fastrnn._cpu: the CPU backend's kernels for Python (fastrnn/backends/cpu_backend.py), which
// allocates every result and passes it in; the kernels write them and allocate only their
// workspace.  The GIL is released while a kernel runs.
#include <torch/extension.h>

#include <string>

#include "cells.h"

namespace {

using fastrnn::cpu::BackwardInputs;
using fastrnn::cpu::BackwardOutputs;
using fastrnn::cpu::CallTensors;
using fastrnn::cpu::ForwardOutputs;
using fastrnn::cpu::Options;
using OptionalTensor = c10::optional<at::Tensor>;

at::Tensor or_undefined(const OptionalTensor& t) { return t.has_value() ? *t : at::Tensor(); }

bool is_lstm(const std::string& cell) {
  TORCH_CHECK(cell == "lstm" || cell == "gru", "fastrnn._cpu: no kernels for the cell ", cell);
  return cell == "lstm";
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrnn's CPU recurrence kernels (csrc/cpu/)";
  py::class_<Options>(m, "Options")
      .def(py::init([](int64_t ln_groups, double zoneout_cell, double zoneout_hidden,
                       double candidate_dropout, int64_t zoneout_cell_threshold,
                       int64_t zoneout_hidden_threshold, int64_t candidate_threshold,
                       bool training, bool reverse, int64_t seed) {
             return Options{ln_groups, zoneout_cell, zoneout_hidden, candidate_dropout,
                            zoneout_cell_threshold, zoneout_hidden_threshold, candidate_threshold,
                            training, reverse, seed};
           }),
           py::arg("ln_groups"), py::arg("zoneout_cell"), py::arg("zoneout_hidden"),
           py::arg("candidate_dropout"), py::arg("zoneout_cell_threshold"),
           py::arg("zoneout_hidden_threshold"), py::arg("candidate_threshold"),
           py::arg("training"), py::arg("reverse"), py::arg("seed"));
  py::class_<CallTensors>(m, "CallTensors")
      .def(py::init([](const at::Tensor& w_hh, const OptionalTensor& b_hh,
                       const OptionalTensor& ln_hh_weight, const OptionalTensor& ln_cell_weight,
                       const OptionalTensor& ln_cell_bias, const at::Tensor& h0,
                       const OptionalTensor& c0, const OptionalTensor& lengths,
                       const OptionalTensor& recurrent_mask, const OptionalTensor& resets,
                       const OptionalTensor& h_reset, const OptionalTensor& c_reset) {
             return CallTensors{w_hh, or_undefined(b_hh), or_undefined(ln_hh_weight),
                                or_undefined(ln_cell_weight), or_undefined(ln_cell_bias), h0,
                                or_undefined(c0), or_undefined(lengths),
                                or_undefined(recurrent_mask), or_undefined(resets),
                                or_undefined(h_reset), or_undefined(c_reset)};
           }),
           py::arg("w_hh"), py::arg("b_hh"), py::arg("ln_hh_weight"), py::arg("ln_cell_weight"),
           py::arg("ln_cell_bias"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
           py::arg("recurrent_mask"), py::arg("resets") = py::none(),
           py::arg("h_reset") = py::none(), py::arg("c_reset") = py::none());
  m.def(
      "forward",
      [](const std::string& cell, const CallTensors& call, const Options& options,
         const at::Tensor& gx, const at::Tensor& out, const at::Tensor& h_n,
         const OptionalTensor& c_n, const OptionalTensor& preact, const OptionalTensor& middle,
         const OptionalTensor& stats) {
        const ForwardOutputs results{out, h_n, or_undefined(c_n), or_undefined(preact),
                                     or_undefined(middle), or_undefined(stats)};
        if (is_lstm(cell)) {
          fastrnn::cpu::lstm_forward(call, options, gx, results);
        } else {
          fastrnn::cpu::gru_forward(call, options, gx, results);
        }
      },
      py::arg("cell"), py::arg("call"), py::arg("options"), py::arg("gx"), py::arg("out"),
      py::arg("h_n"), py::arg("c_n"), py::arg("preact"), py::arg("middle"), py::arg("stats"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "backward",
      [](const std::string& cell, const CallTensors& call, const Options& options,
         const at::Tensor& grad_out, const at::Tensor& grad_h_n, const OptionalTensor& grad_c_n,
         const at::Tensor& out, const at::Tensor& preact, const at::Tensor& middle,
         const at::Tensor& stats, const at::Tensor& d_gx, const at::Tensor& d_w_hh,
         const OptionalTensor& d_b_hh, const OptionalTensor& d_ln_hh_weight,
         const OptionalTensor& d_ln_cell_weight, const OptionalTensor& d_ln_cell_bias,
         const at::Tensor& d_h0, const OptionalTensor& d_c0, const OptionalTensor& d_h_reset,
         const OptionalTensor& d_c_reset) {
        const BackwardInputs in{grad_out, grad_h_n, or_undefined(grad_c_n), out, preact, middle,
                                stats};
        const BackwardOutputs results{d_gx, d_w_hh, or_undefined(d_b_hh),
                                      or_undefined(d_ln_hh_weight), or_undefined(d_ln_cell_weight),
                                      or_undefined(d_ln_cell_bias), d_h0, or_undefined(d_c0),
                                      or_undefined(d_h_reset), or_undefined(d_c_reset)};
        if (is_lstm(cell)) {
          fastrnn::cpu::lstm_backward(call, options, in, results);
        } else {
          fastrnn::cpu::gru_backward(call, options, in, results);
        }
      },
      py::arg("cell"), py::arg("call"), py::arg("options"), py::arg("grad_out"),
      py::arg("grad_h_n"), py::arg("grad_c_n"), py::arg("out"), py::arg("preact"),
      py::arg("middle"), py::arg("stats"), py::arg("d_gx"), py::arg("d_w_hh"), py::arg("d_b_hh"),
      py::arg("d_ln_hh_weight"), py::arg("d_ln_cell_weight"), py::arg("d_ln_cell_bias"),
      py::arg("d_h0"), py::arg("d_c0"), py::arg("d_h_reset") = py::none(),
      py::arg("d_c_reset") = py::none(), py::call_guard<py::gil_scoped_release>());
}
