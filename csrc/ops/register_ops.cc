// Registration of the normopt ops: signatures and shape functions.
//
// Every op takes a list of N gradients of one dtype T; Tacc is the
// accumulation dtype (float64 for float64, float32 otherwise; the kernels
// check the pairing). Float hyperparameters are float64 scalar inputs so
// that float64 runs see them unrounded and changing them never retraces.
// Each list input has its own length attr so that lists of different
// lengths reach the kernel, which rejects them with InvalidArgumentError.
// `kind` is a built-in norm name (or alias) or, where allowed,
// "precomputed": then `norms` ([N], Tacc) holds the norms to use.
// The scaling ops take a `granularity` (tensor, unit or global: what a norm
// is taken over) and `excluded` (indices of gradients that pass unscaled and
// stay out of a global norm); see ScaleSpec in tensor_scales.h.
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace normopt {
namespace {

using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// Scalar inputs are checked to be scalars; list inputs of equal length need
// nothing here (the kernels check shapes).
absl::Status ScalarsAre(InferenceContext* c, std::initializer_list<const char*> names) {
  for (const char* name : names) {
    std::vector<ShapeHandle> shapes;
    TF_RETURN_IF_ERROR(c->input(name, &shapes));
    ShapeHandle unused;
    TF_RETURN_IF_ERROR(c->WithRank(shapes[0], 0, &unused));
  }
  return absl::OkStatus();
}

absl::Status PerTensorVector(InferenceContext* c, const char* name) {
  std::vector<ShapeHandle> shapes;
  TF_RETURN_IF_ERROR(c->input(name, &shapes));
  ShapeHandle unused;
  return c->WithRank(shapes[0], 1, &unused);
}

}  // namespace

REGISTER_OP("NormoptNorms")
    .Input("grads: N * T")
    .Input("epsilon: double")
    .Output("norms: Tacc")
    .Attr("kind: string")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tacc: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(ScalarsAre(c, {"epsilon"}));
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      c->set_output(0, c->Vector(n));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Per-tensor norms of N gradients, one read of each: norm(g_i) + epsilon for the
built-in `kind` (see csrc/normopt/norm_stats.h).
)doc");

REGISTER_OP("NormoptScale")
    .Input("grads: N * T")
    .Input("norms: Tacc")
    .Input("clipnorm: double")
    .Input("epsilon: double")
    .Output("scaled: N * T")
    .Output("grad_norms: Tacc")
    .Attr("kind: string")
    .Attr("kinds: list(string) = []")
    .Attr("mode: string")
    .Attr("granularity: string = 'tensor'")
    .Attr("excluded: list(int) = []")
    .Attr("N: int >= 1")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tacc: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(ScalarsAre(c, {"clipnorm", "epsilon"}));
      TF_RETURN_IF_ERROR(PerTensorVector(c, "norms"));
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      for (int i = 0; i < n; ++i) c->set_output(i, c->input(i));
      c->set_output(n, c->Vector(n));
      return absl::OkStatus();
    })
    .Doc(R"doc(
g_i * s_i, formed in Tacc and rounded back to T, with s_i = 1/norm_i
(mode "normalize") or clipnorm/norm_i where norm_i >= clipnorm, else 1
(mode "clip"); and grad_norms_i = sqrt(sum(g_i^2)), the L2 norm of each
gradient as given, from the same reads. `kinds`, when given, holds the norm
of every gradient (one call for several norms; `kind` is then not read);
norms of statistics only (a matrix norm: NormoptApply).
)doc");

REGISTER_OP("NormoptApply")
    .Input("var: num_vars * resource")
    .Input("slots: num_slots * resource")
    .Input("grad: N * T")
    .Input("indices: M * int64")
    .Input("dense_rows: int64")
    .Input("lr: double")
    .Input("step: double")
    .Input("hyper: double")
    .Input("decay: Tacc")
    .Input("norms: Tacc")
    .Input("clipnorm: double")
    .Input("epsilon: double")
    .Input("weight_eps: double")
    .Input("spectral_vectors: S * Tacc")
    .Output("grad_norms: Tacc")
    .Output("new_spectral_vectors: S * Tacc")
    .Attr("rule: string")
    .Attr("kind: string")
    .Attr("kinds: list(string) = []")
    .Attr("mode: string")
    .Attr("granularity: string = 'tensor'")
    .Attr("excluded: list(int) = []")
    .Attr("sparse: list(int) = []")
    .Attr("N: int >= 1")
    .Attr("M: int >= 0")
    .Attr("num_vars: int >= 0")
    .Attr("num_slots: int >= 0")
    .Attr("S: int >= 0")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tacc: {float, double}")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(
          ScalarsAre(c, {"lr", "step", "clipnorm", "epsilon", "weight_eps"}));
      TF_RETURN_IF_ERROR(PerTensorVector(c, "hyper"));
      TF_RETURN_IF_ERROR(PerTensorVector(c, "decay"));
      TF_RETURN_IF_ERROR(PerTensorVector(c, "dense_rows"));
      TF_RETURN_IF_ERROR(PerTensorVector(c, "norms"));
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      c->set_output(0, c->Vector(n));
      std::vector<ShapeHandle> vectors;
      TF_RETURN_IF_ERROR(c->input("spectral_vectors", &vectors));
      TF_RETURN_IF_ERROR(c->set_output("new_spectral_vectors", vectors));
      return absl::OkStatus();
    })
    .Doc(R"doc(
One Keras 3 optimizer step of update rule `rule` (a row of the table
NORMOPT_UPDATE_RULES in csrc/normopt/update_rules.h) on N resource variables
and their slots in place, each gradient scaled on the fly by the scale of its
norm (per tensor, per unit or global), g' = g * s; mode "adaptive" clips
with threshold clipnorm * max(norm(w), weight_eps) (clipnorm: the clip
factor; norm(w) the variable's, at the same granularity):
  w -= w * decay * lr                    (decoupled weight decay)
  then the rule with g', lr, t = step (iterations + 1) and `hyper`.
`slots` is slot-major: slot 0 of every variable, then slot 1, ...
Gradient `sparse[k]` holds only some rows of its dense gradient, whose first
dimension is dense_rows[k]: its row j is row indices[k][j] of the dense
gradient (each row listed at most once, in any order), and every other row is
zero (CPU only; not with granularity 'unit'). The dense gradient is read
chunk by chunk, never built.
Output grad_norms_i = sqrt(sum(g_i^2)): the L2 norm of each gradient as given
(before the scale), from the statistics the step gathers anyway.
`kinds`, when given, holds the norm of every gradient (one call for several
norms; `kind` is then not read). A matrix norm (spectral, granularity
'tensor', CPU only) measures each dense gradient of two or more axes as the
matrix of all axes but the last by the last (csrc/ops/spectral_norm.h);
`spectral_vectors` holds one persistent vector per such gradient (its last
axis's length), in gradient order, and in mode "adaptive" one per such
variable after them; `new_spectral_vectors` their next values.
)doc");

}  // namespace normopt
