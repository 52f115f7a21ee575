// fastrnn._C: the pybind11 face of the CUDA kernels.  Python (fastrnn/backends/cuda_backend.py)
// passes device addresses, sizes and the stream as keyword arguments; unknown names are errors, so
// a misspelt field cannot silently stay zero.
#include <pybind11/pybind11.h>

#include <string>

#include "launch.h"

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif

namespace py = pybind11;

namespace {

using fastrnn::Plan;
using fastrnn::RecurrenceArgs;

template <typename Member>
struct Field {
  const char* name;
  Member RecurrenceArgs::*member;
};

const Field<int64_t> kIntFields[] = {
    {"steps", &RecurrenceArgs::steps}, {"batch", &RecurrenceArgs::batch},
    {"hidden", &RecurrenceArgs::hidden}, {"gates", &RecurrenceArgs::gates},
    {"ln_groups", &RecurrenceArgs::ln_groups}, {"dtype", &RecurrenceArgs::dtype},
    {"reverse", &RecurrenceArgs::reverse}, {"training", &RecurrenceArgs::training},
    {"zoneout_cell_threshold", &RecurrenceArgs::zoneout_cell_threshold},
    {"zoneout_hidden_threshold", &RecurrenceArgs::zoneout_hidden_threshold},
    {"candidate_threshold", &RecurrenceArgs::candidate_threshold},
};

const Field<double> kFloatFields[] = {
    {"zoneout_cell", &RecurrenceArgs::zoneout_cell},
    {"zoneout_hidden", &RecurrenceArgs::zoneout_hidden},
    {"candidate_dropout", &RecurrenceArgs::candidate_dropout},
};

const Field<uintptr_t> kPointerFields[] = {
    {"gx", &RecurrenceArgs::gx}, {"w_hh", &RecurrenceArgs::w_hh}, {"b_hh", &RecurrenceArgs::b_hh},
    {"ln_hh_weight", &RecurrenceArgs::ln_hh_weight}, {"ln_cell_weight", &RecurrenceArgs::ln_cell_weight},
    {"ln_cell_bias", &RecurrenceArgs::ln_cell_bias}, {"h0", &RecurrenceArgs::h0}, {"c0", &RecurrenceArgs::c0},
    {"lengths", &RecurrenceArgs::lengths}, {"recurrent_mask", &RecurrenceArgs::recurrent_mask},
    {"seed", &RecurrenceArgs::seed}, {"resets", &RecurrenceArgs::resets},
    {"h_reset", &RecurrenceArgs::h_reset}, {"c_reset", &RecurrenceArgs::c_reset},
    {"out", &RecurrenceArgs::out}, {"h_n", &RecurrenceArgs::h_n},
    {"c_n", &RecurrenceArgs::c_n}, {"preact", &RecurrenceArgs::preact}, {"cell", &RecurrenceArgs::cell},
    {"stats", &RecurrenceArgs::stats}, {"hidden_n", &RecurrenceArgs::hidden_n},
    {"state", &RecurrenceArgs::state}, {"grad_out", &RecurrenceArgs::grad_out},
    {"grad_h_n", &RecurrenceArgs::grad_h_n}, {"grad_c_n", &RecurrenceArgs::grad_c_n},
    {"hh", &RecurrenceArgs::hh}, {"d_gx", &RecurrenceArgs::d_gx}, {"d_hh", &RecurrenceArgs::d_hh},
    {"d_h0", &RecurrenceArgs::d_h0}, {"d_c0", &RecurrenceArgs::d_c0},
    {"d_h_reset", &RecurrenceArgs::d_h_reset}, {"d_c_reset", &RecurrenceArgs::d_c_reset},
    {"param_partials", &RecurrenceArgs::param_partials}, {"scratch", &RecurrenceArgs::scratch},
    {"stream", &RecurrenceArgs::stream},
};


struct PlanField {
  const char* name;
  int64_t Plan::*member;
};

const PlanField kPlanMembers[] = {
    {"team_blocks", &Plan::team_blocks}, {"units", &Plan::units}, {"batch_tile", &Plan::batch_tile},
    {"tiles", &Plan::tiles}, {"cluster", &Plan::cluster}, {"smem_bytes", &Plan::smem_bytes},
    {"scratch_floats", &Plan::scratch_floats},
};

template <typename Table, typename Apply>
bool assign_if_named(const Table& table, const std::string& key, Apply apply) {
  for (const auto& field : table) {
    if (key == field.name) {
      apply(field);
      return true;
    }
  }
  return false;
}

RecurrenceArgs args_from(const py::kwargs& fields) {
  RecurrenceArgs args;
  for (const auto& item : fields) {
    const std::string key = py::cast<std::string>(item.first);
    const py::handle value = item.second;
    const bool known =
        assign_if_named(kIntFields, key, [&](const Field<int64_t>& f) { args.*(f.member) = py::cast<int64_t>(value); }) ||
        assign_if_named(kFloatFields, key, [&](const Field<double>& f) { args.*(f.member) = py::cast<double>(value); }) ||
        assign_if_named(kPointerFields, key, [&](const Field<uintptr_t>& f) { args.*(f.member) = py::cast<uintptr_t>(value); }) ||
        assign_if_named(kPlanMembers, key, [&](const PlanField& f) { args.plan.*(f.member) = py::cast<int64_t>(value); });
    if (!known) throw py::type_error("fastrnn._C: unknown argument '" + key + "'");
  }
  return args;
}

py::dict plan(const std::string& cell, bool backward, int64_t hidden, int64_t batch, int64_t dtype,
              bool layer_norm) {
  std::string refusal;
  const Plan p = fastrnn::plan_recurrence(cell, backward, hidden, batch, dtype, layer_norm, &refusal);
  if (p.team_blocks == 0) throw py::value_error(refusal);
  py::dict result;
  for (const auto& field : kPlanMembers) result[field.name] = p.*(field.member);
  return result;
}

void launch(const std::string& cell, bool backward, const py::kwargs& fields) {
  fastrnn::launch_recurrence(cell, backward, args_from(fields));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrnn CUDA kernels: persistent LSTM / GRU recurrences (see csrc/README.md)";
  m.def("plan", &plan, py::arg("cell"), py::arg("backward"), py::arg("hidden"), py::arg("batch"),
        py::arg("dtype"), py::arg("layer_norm"),
        "How a call is split over blocks on the current device; ValueError when it cannot run.");
  m.def("launch", &launch, py::arg("cell"), py::arg("backward"),
        "Enqueues one forward or backward recurrence on the given stream (keyword fields).");
}
