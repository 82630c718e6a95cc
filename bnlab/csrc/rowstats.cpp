// bnlab's row statistics of float32 tensors on the CPU, each in one call for all of a step's rows.
//
// The PyTorch path (bnlab/rowstats.py) spends its time on the overhead of hundreds of small ops, not
// on arithmetic; here each statistic is one loop over each row. Every sum is accumulated in double (a
// float32's square is exact in double, so no norm under- or overflows). Histogram bins come from
// arithmetic, corrected against numpy's float64 edges, not from a sort. Built by bnlab/native.py with
// the system's C++ compiler; called through ctypes.
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

// Independent accumulators: one running double sum waits ~4 cycles on each add. The compiler keeps
// the lanes in vector registers; 32 hide the adds' latency (3.5x faster than 8 here, and than
// `omp simd` reductions with gcc 12).
constexpr int LANES = 32;

// sum over i < n of term(i), in double, lane by lane.
template <typename Term>
double lane_sum(int64_t n, Term term) {
    double acc[LANES] = {};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; ++k) acc[k] += term(i + k);
    for (; i < n; ++i) acc[0] += term(i);
    double total = 0;
    for (int k = 0; k < LANES; ++k) total += acc[k];
    return total;
}

struct Sums {
    double sum, squares;
    float low, high;
};

// Sum, sum of squares, min and max of one row (min and max are NaN if the row holds a NaN).
Sums sums(const float *x, int64_t n) {
    double sum = lane_sum(n, [x](int64_t i) { return double(x[i]); });
    double squares = lane_sum(n, [x](int64_t i) { return double(x[i]) * double(x[i]); });
    float low[LANES], high[LANES];
    std::fill(low, low + LANES, INFINITY);
    std::fill(high, high + LANES, -INFINITY);
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; ++k) {
            float v = x[i + k];
            low[k] = v < low[k] ? v : low[k];  // a NaN never replaces an extreme
            high[k] = v > high[k] ? v : high[k];
        }
    for (; i < n; ++i) {
        low[0] = x[i] < low[0] ? x[i] : low[0];
        high[0] = x[i] > high[0] ? x[i] : high[0];
    }
    Sums s = {sum, squares, INFINITY, -INFINITY};
    for (int k = 0; k < LANES; ++k) s.low = std::min(s.low, low[k]), s.high = std::max(s.high, high[k]);
    // a NaN makes the sum NaN (so do inf and -inf together): only then look for one
    if (std::isnan(sum) && std::any_of(x, x + n, [](float v) { return std::isnan(v); })) s.low = s.high = NAN;
    return s;
}

// The fraction of a row's units where flat(pre, post) holds.
template <typename Flat>
double fraction(const float *x, const float *y, int64_t n, Flat flat) {
    return lane_sum(n, [=](int64_t i) { return double(flat(x[i], y[i])); }) / double(n);
}

}  // namespace

extern "C" {

// For each row: out[6 i ..] = sum, sum of squares, min, max, mean, population std (two-pass).
// With centered = 0 the std (a second pass over the row) is skipped and left 0.
void bnlab_moments(int64_t count, const float *const *rows, const int64_t *sizes, int centered, double *out) {
    for (int64_t r = 0; r < count; ++r) {
        int64_t n = sizes[r];
        Sums s = sums(rows[r], n);
        double mean = s.sum / n;
        double *o = out + 6 * r;
        o[0] = s.sum, o[1] = s.squares, o[2] = s.low, o[3] = s.high, o[4] = mean;
        const float *x = rows[r];
        auto square = [x, mean](int64_t i) { return (x[i] - mean) * (x[i] - mean); };
        o[5] = centered ? std::sqrt(lane_sum(n, square) / n) : 0.0;
    }
}

// For each pair of rows (a weight after and before a step): out[2 r] = |after|, out[2 r + 1] =
// |after - before|, each difference exact in double. One row after the other, so the second pass
// over `after` reads it from the cache.
void bnlab_update_norms(int64_t count, const float *const *after, const float *const *before, const int64_t *sizes,
                        double *out) {
    for (int64_t r = 0; r < count; ++r) {
        const float *x = after[r], *y = before[r];
        out[2 * r] = std::sqrt(lane_sum(sizes[r], [x](int64_t i) { return double(x[i]) * double(x[i]); }));
        auto step = [x, y](int64_t i) { return (double(x[i]) - y[i]) * (double(x[i]) - y[i]); };
        out[2 * r + 1] = std::sqrt(lane_sum(sizes[r], step));
    }
}

// Histogram counts of each row over `bins` bins with the given float64 edges (edges[r * (bins + 1) ..],
// numpy's): bin k holds edge[k] <= x < edge[k + 1], the last bin also its right edge. Values outside
// the edges or NaN are not counted; a row whose edges are not finite counts nothing. `scratch` holds
// the longest row's bin indices.
void bnlab_histograms(int64_t count, const float *const *rows, const int64_t *sizes, int64_t bins,
                      const double *edges, int32_t *scratch, double *counts) {
    if (bins > 255) return;  // the tallies below hold 256 bins (bnlab.native checks this first)
    for (int64_t r = 0; r < count; ++r) {
        const double *e = edges + r * (bins + 1);
        double *c = counts + r * bins;
        std::fill(c, c + bins, 0.0);
        double first = e[0], last = e[bins];
        if (!std::isfinite(first) || !std::isfinite(last) || !(last > first)) continue;
        const float *x = rows[r];
        int64_t n = sizes[r];
        // numpy.histogram's steps: a guess from arithmetic (off by at most one), then one correction
        // each way against the edges, which are recomputed as numpy's linspace makes them (k * step +
        // first, rounded twice: built with -ffp-contract=off) rather than read from the table, so the
        // loop has neither branches nor gathers and is vectorized (-fno-trapping-math). Bin `bins`
        // marks a value outside the edges, or NaN.
        double step = (last - first) / double(bins), scale = double(bins) / (last - first);
        double top = double(bins - 1), outside = double(bins);
        for (int64_t i = 0; i < n; ++i) {
            double v = x[i];
            double g = (v - first) * scale;
            g = g > 0.0 ? g : 0.0;  // NaN too
            double k = std::trunc(g < top ? g : top);
            double below = k * step + first;
            double above = k + 1 < outside ? (k + 1) * step + first : last;
            k -= v < below && k > 0 ? 1.0 : 0.0;
            k += v >= above && k < top ? 1.0 : 0.0;  // (after a step down, v < the new upper edge)
            k = v >= first && v <= last ? k : outside;
            scratch[i] = int32_t(k);
        }
        int64_t tally[4][256] = {};  // four tallies: consecutive values in one bin don't wait on each other
        int64_t i = 0;
        for (; i + 4 <= n; i += 4)
            for (int k = 0; k < 4; ++k) ++tally[k][scratch[i + k]];
        for (; i < n; ++i) ++tally[0][scratch[i]];
        for (int64_t k = 0; k < bins; ++k) c[k] = double(tally[0][k] + tally[1][k] + tally[2][k] + tally[3][k]);
    }
}

// Fraction of units in the flat part of the nonlinearity (bnlab.probes.saturated_mask): kind 1 sigmoid,
// 2 tanh, 3 relu, 4 gelu, anything else never. Thresholds are float32, as torch compares a float32 tensor.
void bnlab_saturated(int64_t count, const float *const *pre, const float *const *post, const int64_t *sizes,
                     int kind, double *out) {
    for (int64_t r = 0; r < count; ++r) {
        const float *x = pre[r], *y = post[r];
        int64_t n = sizes[r];
        switch (kind) {
            case 1: out[r] = fraction(x, y, n, [](float, float v) { return (v < 0.01f) | (v > 0.99f); }); break;
            case 2: out[r] = fraction(x, y, n, [](float, float v) { return std::fabs(v) > 0.99f; }); break;
            case 3: out[r] = fraction(x, y, n, [](float, float v) { return v == 0.0f; }); break;
            case 4: out[r] = fraction(x, y, n, [](float u, float) { return u < -3.0f; }); break;
            default: out[r] = 0.0;
        }
    }
}

}  // extern "C"
