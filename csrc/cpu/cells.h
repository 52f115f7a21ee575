// The entry points of the CPU backend, one forward and one backward per cell, dispatched on the
// call's element type (float32, float64, bfloat16).  bindings.cpp exposes them to
// fastrnn/backends/cpu_backend.py, which allocates every result.
#pragma once

#include "recurrence.h"

namespace fastrnn {
namespace cpu {

void lstm_forward(const CallTensors& call, const Options& options, const at::Tensor& gx,
                  const ForwardOutputs& results);
void lstm_backward(const CallTensors& call, const Options& options, const BackwardInputs& in,
                   const BackwardOutputs& results);
void gru_forward(const CallTensors& call, const Options& options, const at::Tensor& gx,
                 const ForwardOutputs& results);
void gru_backward(const CallTensors& call, const Options& options, const BackwardInputs& in,
                  const BackwardOutputs& results);

}  // namespace cpu
}  // namespace fastrnn
