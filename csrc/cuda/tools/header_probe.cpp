// Command-line probe of the host side of the shared headers, for the tests:
// they compare normopt/kernels/_finalize.py, chunks.py and
// normopt/header_tables.py against it.
//
// stdin, one query per line:
//   finalize KIND MODE CLIPNORM EPS COUNT SUM_ABS SUM_SQ MAX_ABS MIN_ABS MEAN M2
//     -> "NORM SCALE STATS_NEEDED"  (SCALE = pre * mult of scale_from_norm)
//   tscale MODE CLIPNORM NORM -> "PRE MULT" (scale_from_norm in float, then
//     in double)
//   merge COUNT_A ... M2_A COUNT_B ... M2_B      (7 + 7 numbers)
//     -> the 7 merged statistics
//   chunks CHUNK_SIZE N SIZE_0 ... SIZE_N-1
//     -> "FIRST..." / "TENSOR..." / "START..." on three lines
//   sparse_chunks CHUNK_SIZE N SIZE_0 ... SIZE_N-1, then per tensor
//     ROW_ELEMS COUNT ROW_0 ... ROW_COUNT-1 VALUE_ROW_0 ... (ROW_ELEMS 0 and
//     COUNT 0: dense)
//     -> "FIRST..." / "TENSOR..." / "START..." / "GRAD..." / "ZEROS..." on
//        five lines (build_sparse_chunk_table)
//   names -> "NUM_KINDS ACCEPTED" (kNumNormKinds, accepted_norm_names(","))
//   parse NAME -> "CODE STATS_NEEDED" (parse_norm_kind), or "unknown"
//   rules -> per row of NORMOPT_UPDATE_RULES, one line
//     "NAME SLOT_NAMES HYPERS TRUST_RATIO ZERO_GRADIENT_KEEPS_STATE"
//     (update_rules.h; SLOT_NAMES "m,v", "-" for none; the flags 0 or 1)
// Numbers are printed with 17 significant digits (double accumulation);
// statistics may be nan or inf.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/chunk_table.h"
#include "normopt/norm_stats.h"
#include "normopt/update_rules.h"

namespace {

using Stats = normopt::NormStats<double>;

// One number; strtod also reads "nan" and "inf", which operator>> does not.
double read_number(std::istream& in) {
  std::string token;
  in >> token;
  return std::strtod(token.c_str(), nullptr);
}

Stats read_stats(std::istream& in) {
  Stats s = Stats::empty();
  in >> s.count;
  for (double* field : {&s.sum_abs, &s.sum_sq, &s.max_abs, &s.min_abs, &s.mean,
                        &s.m2}) {
    *field = read_number(in);
  }
  return s;
}

template <typename V>
void print_line(const V& values) {
  for (auto v : values) std::printf("%lld ", static_cast<long long>(v));
  std::printf("\n");
}

void print_stats(const Stats& s) {
  std::printf("%lld %.17g %.17g %.17g %.17g %.17g %.17g\n",
              static_cast<long long>(s.count), s.sum_abs, s.sum_sq, s.max_abs,
              s.min_abs, s.mean, s.m2);
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string op;
    in >> op;
    if (op == "finalize") {
      int kind, mode;
      double clipnorm, eps;
      in >> kind >> mode >> clipnorm >> eps;
      const Stats s = read_stats(in);
      const auto k = static_cast<normopt::NormKind>(kind);
      const double norm = normopt::finalize_norm(k, s, eps);
      const auto ts = normopt::scale_from_norm(
          static_cast<normopt::ScaleMode>(mode), norm, clipnorm);
      const double scale = ts.pre * ts.mult;
      std::printf("%.17g %.17g %u\n", norm, scale, normopt::stats_needed(k));
    } else if (op == "tscale") {
      int mode;
      in >> mode;
      const double clipnorm = read_number(in), norm = read_number(in);
      const auto m = static_cast<normopt::ScaleMode>(mode);
      const auto f = normopt::scale_from_norm<float>(
          m, static_cast<float>(norm), static_cast<float>(clipnorm));
      const auto d = normopt::scale_from_norm<double>(m, norm, clipnorm);
      std::printf("%.9g %.9g %.17g %.17g\n", f.pre, f.mult, d.pre, d.mult);
    } else if (op == "merge") {
      const Stats a = read_stats(in);
      const Stats b = read_stats(in);
      print_stats(normopt::merge_stats(a, b));
    } else if (op == "chunks" || op == "sparse_chunks") {
      long long chunk_size;
      int n;
      in >> chunk_size >> n;
      std::vector<int64_t> sizes(n);
      for (auto& s : sizes) in >> s;
      std::vector<std::vector<int64_t>> rows(n), value_row(n);
      std::vector<normopt::cuda::SparseRows> sparse(n);  // "chunks": all dense
      for (int t = 0; op == "sparse_chunks" && t < n; ++t) {
        in >> sparse[t].row_elems >> sparse[t].count;
        rows[t].resize(sparse[t].count);
        value_row[t].resize(sparse[t].count);
        for (auto& r : rows[t]) in >> r;
        for (auto& v : value_row[t]) in >> v;
        sparse[t].rows = rows[t].data();
        sparse[t].value_row = value_row[t].data();
      }
      const auto table =
          op == "chunks"
              ? normopt::cuda::build_chunk_table(sizes.data(), n, chunk_size)
              : normopt::cuda::build_sparse_chunk_table(sizes.data(), n,
                                                        chunk_size,
                                                        sparse.data());
      print_line(table.first);
      print_line(table.tensor);
      print_line(table.start);
      if (op == "sparse_chunks") {
        print_line(table.grad);
        print_line(table.zeros);
      }
    } else if (op == "names") {
      std::printf("%d %s\n", normopt::kNumNormKinds,
                  normopt::accepted_norm_names(",").c_str());
    } else if (op == "parse") {
      std::string name;
      in >> name;
      normopt::NormKind k;
      if (normopt::parse_norm_kind(name.c_str(), &k)) {
        std::printf("%d %u\n", static_cast<int>(k), normopt::stats_needed(k));
      } else {
        std::printf("unknown\n");
      }
    } else if (op == "rules") {
#define NORMOPT_PROBE_RULE(name, Rule)                                      \
  {                                                                         \
    const auto id = normopt::RuleId::k_##name;                              \
    const std::string slots = normopt::rule_slot_names(id);                 \
    std::printf("%s %s %d %d %d\n", #name, slots.empty() ? "-" : slots.c_str(), \
                normopt::rule_hypers(id), normopt::rule_trust_ratio(id) ? 1 : 0, \
                normopt::rule_zero_gradient_keeps_state(id) ? 1 : 0);       \
  }
      NORMOPT_UPDATE_RULES(NORMOPT_PROBE_RULE)
#undef NORMOPT_PROBE_RULE
    } else if (!op.empty()) {
      std::fprintf(stderr, "unknown query: %s\n", op.c_str());
      return 2;
    }
    std::fflush(stdout);
  }
  return 0;
}
