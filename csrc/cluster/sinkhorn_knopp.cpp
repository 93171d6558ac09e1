// Log-domain Sinkhorn-Knopp (SwAV codes, DINOv2 SK centering): schema, checks, host loop.
//
//   sinkhorn_knopp(scores (B, K), epsilon, iterations, check_finite) -> Q (B, K)
//       Q = SwAV's sinkhorn: rows of Q sum to 1, columns carry mass ~B/K.
//   The building blocks, for the distributed loop in jem_fast/ops/sinkhorn_knopp.py (the column
//   statistics are merged across ranks there):
//   sinkhorn_column_stats(scores, scale, row_potential?) -> (2, K) float64: per column max and
//       shifted sum of exp(scale S_bk + f_b)
//   sinkhorn_row_potential(scores, scale, col_potential, log_rows) -> f (B,) float64
//   (potentials are float64 vectors for every score dtype)
//   sinkhorn_plan(scores, scale, row_potential, col_potential, rows) -> Q (B, K)
//
// The iterations only touch two potential vectors (K and B doubles); the scores are read once
// per step and Q is written once at the end (the last row step and the plan are one fused pass
// per row), so the extra memory is Q plus O(B + K) (and, on CPU, one float32 copy of
// float16/bfloat16 scores). Potentials and column statistics are float64 for every score dtype;
// sums and exps are float32 (float64 for float64 scores); the output is float32 or float64,
// never the input's half dtype, since SwAV's codes feed a float32 cross-entropy. See
// sinkhorn_knopp_kernels.h for the algebra and the precision.
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include "cluster/sinkhorn_knopp_kernels.h"
#include "common/host_utils.h"

namespace jem_fast {
namespace sinkhorn {
namespace {

constexpr const char* kOp = "sinkhorn_knopp";

void check_scores(const at::Tensor& s) {
  TORCH_CHECK(s.dim() == 2, kOp, ": scores must be 2-D (batch, prototypes), got shape ",
              s.sizes());
  TORCH_CHECK(s.size(0) >= 1, kOp, ": scores must hold at least one row, got shape ", s.sizes());
  TORCH_CHECK(s.size(1) >= 1, kOp, ": scores must hold at least one prototype column, got shape ",
              s.sizes());
  TORCH_CHECK(at::isFloatingType(s.scalar_type()), kOp,
              ": scores must be a floating-point tensor (float32, float64, float16 or bfloat16), "
              "got ", s.scalar_type());
}

void check_scale(double scale, const char* what) {
  TORCH_CHECK(std::isfinite(scale) && scale > 0.0, kOp, ": ", what,
              " must be finite and > 0, got ", scale);
}

void check_vector(const at::Tensor& v, int64_t n, const at::Tensor& s, const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, kOp, ": ", name, " must be a vector of ", n,
              " entries, got shape ", v.sizes());
  TORCH_CHECK(v.scalar_type() == at::kDouble, kOp, ": ", name,
              " must be float64 (potentials are float64 for every score dtype), got ",
              v.scalar_type());
  TORCH_CHECK(v.device() == s.device(), kOp, ": ", name, " must be on the scores' device ",
              s.device(), ", got ", v.device());
}

// The scores as the kernels read them: contiguous; on CPU half dtypes upcast once.
at::Tensor as_kernel_scores(const at::Tensor& s) {
  return (s.is_cuda() ? s : s.to(acc_type_of(s.scalar_type()))).contiguous();
}

#ifdef WITH_CUDA
cudaStream_t stream_of(const at::Tensor& t) { return at::cuda::getCurrentCUDAStream().stream(); }
#endif

// The float64 potentials as the CUDA kernels read them: for float64 scores the vector itself
// (lo undefined), otherwise float32 hi = float(p) and lo = float(p - hi) (0 where p is not
// finite). An undefined p stays undefined.
#ifdef WITH_CUDA
std::pair<at::Tensor, at::Tensor> cuda_potential(const at::Tensor& p, const at::Tensor& S) {
  if (!p.defined() || S.scalar_type() == at::kDouble) return {p, at::Tensor()};
  at::Tensor hi = p.to(at::kFloat);
  at::Tensor lo = at::nan_to_num(p.sub(hi.to(at::kDouble)), 0.0, 0.0, 0.0).to(at::kFloat);
  return {hi, lo};
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
#endif

at::Tensor column_stats_impl(const at::Tensor& S, double scale, const at::Tensor& f) {
  const int64_t B = S.size(0), K = S.size(1);
  at::Tensor stats = at::empty({2, K}, S.options().dtype(at::kDouble));
  double* out = stats.data_ptr<double>();
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "sinkhorn_column_stats_cpu", [&] {
      column_stats_cpu<scalar_t>(S.data_ptr<scalar_t>(), B, K, scale,
                                 f.defined() ? f.data_ptr<double>() : nullptr, out, out + K);
    });
  } else {
#ifdef WITH_CUDA
    at::Tensor partial =
        at::empty({column_stats_partials_cuda(B, K), 2, K}, S.options().dtype(at::kDouble));
    const auto f_pair = cuda_potential(f, S);
    column_stats_cuda(to_kernel_dtype(S.scalar_type()), S.data_ptr(), B, K, scale,
                      ptr_or_null(f_pair.first), ptr_or_null(f_pair.second), partial.data_ptr(),
                      out, out + K, stream_of(S));
#endif
  }
  return stats;
}

at::Tensor row_potential_impl(const at::Tensor& S, double scale, const at::Tensor& g,
                              double log_rows) {
  const int64_t B = S.size(0), K = S.size(1);
  at::Tensor f = at::empty({B}, S.options().dtype(at::kDouble));
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "sinkhorn_row_potential_cpu", [&] {
      row_potential_cpu<scalar_t>(S.data_ptr<scalar_t>(), B, K, scale, g.data_ptr<double>(),
                                  log_rows, f.data_ptr<double>());
    });
  } else {
#ifdef WITH_CUDA
    const auto g_pair = cuda_potential(g, S);
    row_potential_cuda(to_kernel_dtype(S.scalar_type()), S.data_ptr(), B, K, scale,
                       ptr_or_null(g_pair.first), ptr_or_null(g_pair.second), log_rows,
                       f.data_ptr(), stream_of(S));
#endif
  }
  return f;
}

at::Tensor plan_impl(const at::Tensor& S, double scale, const at::Tensor& f, const at::Tensor& g,
                     double rows) {
  const int64_t B = S.size(0), K = S.size(1);
  const auto acc = acc_type_of(S.scalar_type());
  at::Tensor Q = at::empty({B, K}, S.options().dtype(acc));
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(acc, "sinkhorn_plan_cpu", [&] {
      plan_cpu<scalar_t>(S.data_ptr<scalar_t>(), B, K, scale, f.data_ptr<double>(),
                         g.data_ptr<double>(), rows, Q.data_ptr<scalar_t>());
    });
  } else {
#ifdef WITH_CUDA
    const auto g_pair = cuda_potential(g, S);
    plan_cuda(to_kernel_dtype(S.scalar_type()), S.data_ptr(), B, K, scale, f.data_ptr(),
              ptr_or_null(g_pair.first), ptr_or_null(g_pair.second), rows, Q.data_ptr(),
              stream_of(S));
#endif
  }
  return Q;
}

// The last row step fused with the plan: (Q, f) with Q's rows normalized exactly.
std::pair<at::Tensor, at::Tensor> row_plan_impl(const at::Tensor& S, double scale,
                                                const at::Tensor& g, double log_rows) {
  const int64_t B = S.size(0), K = S.size(1);
  const auto acc = acc_type_of(S.scalar_type());
  at::Tensor Q = at::empty({B, K}, S.options().dtype(acc));
  at::Tensor f = at::empty({B}, S.options().dtype(at::kDouble));
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(acc, "sinkhorn_row_plan_cpu", [&] {
      row_plan_cpu<scalar_t>(S.data_ptr<scalar_t>(), B, K, scale, g.data_ptr<double>(),
                             log_rows, f.data_ptr<double>(), Q.data_ptr<scalar_t>());
    });
  } else {
#ifdef WITH_CUDA
    const auto g_pair = cuda_potential(g, S);
    row_plan_cuda(to_kernel_dtype(S.scalar_type()), S.data_ptr(), B, K, scale,
                  ptr_or_null(g_pair.first), ptr_or_null(g_pair.second), log_rows, f.data_ptr(),
                  Q.data_ptr(), stream_of(S));
#endif
  }
  return {Q, f};
}

// Called when the potentials came out non-finite: finite (or -inf) scores whose largest
// |scores| / epsilon overflows the exponents' range (float32 for the CUDA kernels of
// non-float64 scores: ~3.4e38; float64 otherwise) get an error saying so instead of the NaN/Inf
// one.
void check_exponent_range(const at::Tensor& S, double scale) {
  const bool no_nan_or_pos_inf =
      !(at::isnan(S).any().item<bool>() || at::isposinf(S).any().item<bool>());
  if (!no_nan_or_pos_inf) return;
  const double largest =
      at::where(at::isfinite(S), S.abs(), at::zeros_like(S)).max().item<double>() * scale;
  const bool float_exponents = S.is_cuda() && S.scalar_type() != at::kDouble;
  const double limit = float_exponents ? 3.0e38 : 1.0e307;
  TORCH_CHECK(!(largest > limit), kOp, ": |scores| / epsilon reaches ", largest,
              ", beyond the range of the exponents (", limit, ")",
              float_exponents ? " of the CUDA kernels for non-float64 scores: pass float64 "
                                "scores, a larger epsilon or smaller scores"
                              : ": pass a larger epsilon or smaller scores");
}

// g_k = -log K - LSE_b(...), from the (max, shifted sum) statistics of a column step.
at::Tensor column_potential(const at::Tensor& stats, int64_t K) {
  return stats[1].log().add_(stats[0]).neg_().sub_(std::log(static_cast<double>(K)));
}

at::Tensor sinkhorn_knopp(const at::Tensor& scores, double epsilon, int64_t iterations,
                          bool check_finite) {
  check_scores(scores);
  check_scale(epsilon, "epsilon");
  TORCH_CHECK(iterations >= 0, kOp, ": iterations must be >= 0, got ", iterations);
  const DeviceScope scope(scores, kOp);
  const at::Tensor S = as_kernel_scores(scores);
  const int64_t B = S.size(0), K = S.size(1);
  const double scale = 1.0 / epsilon;
  check_scale(scale, "1 / epsilon");
  at::Tensor f, g, Q;
  const double log_rows = std::log(static_cast<double>(B));
  if (iterations == 0) {
    // No normalization step: Q = B exp(L) / sum(exp(L)).
    const at::Tensor stats = column_stats_impl(S, scale, at::Tensor());
    const at::Tensor total_lse = at::logsumexp(stats[1].log().add_(stats[0]), {0});
    f = total_lse.neg().expand({B}).contiguous();
    g = at::zeros({K}, f.options());
  } else {
    for (int64_t it = 0; it < iterations; ++it) {
      g = column_potential(column_stats_impl(S, scale, f), K);
      if (it + 1 < iterations) {
        f = row_potential_impl(S, scale, g, log_rows);
      } else {
        std::tie(Q, f) = row_plan_impl(S, scale, g, log_rows);  // last row step + plan
      }
    }
  }
  if (check_finite && !capturing_cuda_graph(f)) {
    const bool finite = at::isfinite(f).all().item<bool>() && at::isfinite(g).all().item<bool>();
    if (!finite) check_exponent_range(S, scale);
    TORCH_CHECK(finite, kOp,
                ": scores contain NaN or +Inf, or a row or column with every score at -inf; "
                "the assignment is undefined (a -inf score elsewhere is allowed: an impossible "
                "assignment, 0 in the plan). Pass check_finite=False to skip this check (and "
                "its device synchronization).");
  }
  return Q.defined() ? Q : plan_impl(S, scale, f, g, static_cast<double>(B));
}

at::Tensor sinkhorn_column_stats(const at::Tensor& scores, double scale,
                                 const std::optional<at::Tensor>& row_potential) {
  check_scores(scores);
  check_scale(scale, "scale (1 / epsilon)");
  if (row_potential.has_value()) check_vector(*row_potential, scores.size(0), scores, "row_potential");
  const DeviceScope scope(scores, kOp);
  const at::Tensor f = row_potential.has_value() ? row_potential->contiguous() : at::Tensor();
  return column_stats_impl(as_kernel_scores(scores), scale, f);
}

at::Tensor sinkhorn_row_potential(const at::Tensor& scores, double scale,
                                  const at::Tensor& col_potential, double log_rows) {
  check_scores(scores);
  check_scale(scale, "scale (1 / epsilon)");
  check_vector(col_potential, scores.size(1), scores, "col_potential");
  const DeviceScope scope(scores, kOp);
  return row_potential_impl(as_kernel_scores(scores), scale, col_potential.contiguous(), log_rows);
}

at::Tensor sinkhorn_plan(const at::Tensor& scores, double scale, const at::Tensor& row_potential,
                         const at::Tensor& col_potential, double rows) {
  check_scores(scores);
  check_scale(scale, "scale (1 / epsilon)");
  check_vector(row_potential, scores.size(0), scores, "row_potential");
  check_vector(col_potential, scores.size(1), scores, "col_potential");
  const DeviceScope scope(scores, kOp);
  return plan_impl(as_kernel_scores(scores), scale, row_potential.contiguous(),
                   col_potential.contiguous(), rows);
}

}  // namespace
}  // namespace sinkhorn
}  // namespace jem_fast

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def("sinkhorn_knopp(Tensor scores, float epsilon, int iterations, bool check_finite) -> Tensor");
  m.def("sinkhorn_column_stats(Tensor scores, float scale, Tensor? row_potential) -> Tensor");
  m.def("sinkhorn_row_potential(Tensor scores, float scale, Tensor col_potential, float log_rows) -> Tensor");
  m.def("sinkhorn_plan(Tensor scores, float scale, Tensor row_potential, Tensor col_potential, float rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) {
  m.impl("sinkhorn_knopp", &jem_fast::sinkhorn::sinkhorn_knopp);
  m.impl("sinkhorn_column_stats", &jem_fast::sinkhorn::sinkhorn_column_stats);
  m.impl("sinkhorn_row_potential", &jem_fast::sinkhorn::sinkhorn_row_potential);
  m.impl("sinkhorn_plan", &jem_fast::sinkhorn::sinkhorn_plan);
}

TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) {
  m.impl("sinkhorn_knopp", &jem_fast::sinkhorn::sinkhorn_knopp);
  m.impl("sinkhorn_column_stats", &jem_fast::sinkhorn::sinkhorn_column_stats);
  m.impl("sinkhorn_row_potential", &jem_fast::sinkhorn::sinkhorn_row_potential);
  m.impl("sinkhorn_plan", &jem_fast::sinkhorn::sinkhorn_plan);
}
