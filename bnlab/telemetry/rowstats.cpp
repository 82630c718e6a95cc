// bnlab's row statistics of float32 tensors on the CPU, each in one call for all of a step's rows.
//
// The PyTorch path (bnlab/rowstats.py) spends its time on the overhead of hundreds of small ops, not
// on arithmetic; here each statistic is one loop over each row. Every sum is accumulated in double (a
// float32's square is exact in double, so no norm under- or overflows). Histogram bins come from
// arithmetic, corrected against numpy's float64 edges, not from a sort. At the end, bnlab_step: a
// whole training step's measurement in one call, which can run on a thread of its own. Built by
// bnlab/native.py with the system's C++ compiler; called through ctypes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

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

// The population std of a row about its mean (the second of two passes).
double population_std(const float *x, int64_t n, double mean) {
    return std::sqrt(lane_sum(n, [x, mean](int64_t i) { return (x[i] - mean) * (x[i] - mean); }) / n);
}

// The fraction of a row's units where flat(pre, post) holds.
template <typename Flat>
double fraction(const float *x, const float *y, int64_t n, Flat flat) {
    return lane_sum(n, [=](int64_t i) { return double(flat(x[i], y[i])); }) / double(n);
}

// The fraction of a row's units in the flat part of its nonlinearity (bnlab.probes.saturated_mask): kind 1
// sigmoid, 2 tanh, 3 relu, 4 gelu, anything else never. Thresholds are float32, as torch compares a float32 tensor.
double saturated_fraction(int kind, const float *x, const float *y, int64_t n) {
    switch (kind) {
        case 1: return fraction(x, y, n, [](float, float v) { return (v < 0.01f) | (v > 0.99f); });
        case 2: return fraction(x, y, n, [](float, float v) { return std::fabs(v) > 0.99f; });
        case 3: return fraction(x, y, n, [](float, float v) { return v == 0.0f; });
        case 4: return fraction(x, y, n, [](float u, float) { return u < -3.0f; });
        default: return 0.0;
    }
}

// The counts of x's n values in `bins` bins between numpy's float64 edges first..last (see
// bnlab_histograms), into counts[0 .. bins); bins <= 255.
void histogram(const float *x, int64_t n, int64_t bins, double first, double last, int32_t *scratch,
               double *counts) {
    std::fill(counts, counts + bins, 0.0);
    if (!std::isfinite(first) || !std::isfinite(last) || !(last > first)) return;
    // numpy.histogram's steps: a guess from arithmetic (off by at most one), then one correction
    // each way against the edges, which are recomputed as numpy's linspace makes them (k * step +
    // first, rounded twice: built with -ffp-contract=off) rather than read from a table, so the
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
    for (int64_t k = 0; k < bins; ++k) counts[k] = double(tally[0][k] + tally[1][k] + tally[2][k] + tally[3][k]);
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
        o[5] = centered ? population_std(rows[r], n, mean) : 0.0;
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
    if (bins > 255) return;  // the tallies hold 256 bins (bnlab.native checks this first)
    for (int64_t r = 0; r < count; ++r)
        histogram(rows[r], sizes[r], bins, edges[r * (bins + 1)], edges[r * (bins + 1) + bins], scratch,
                  counts + r * bins);
}

// saturated_fraction of each row.
void bnlab_saturated(int64_t count, const float *const *pre, const float *const *post, const int64_t *sizes,
                     int kind, double *out) {
    for (int64_t r = 0; r < count; ++r) out[r] = saturated_fraction(kind, pre[r], post[r], sizes[r]);
}

}  // extern "C"

// ---------------------------------------------------------------------------------------------------
// One training step's whole measurement (bnlab.probes.Capture.measure on CPU float32 tensors) in one
// call, which can run on a thread of its own while the next step trains (bnlab_step_start / _wait):
// it never touches Python, so it never waits for the GIL nor makes the training thread wait for it.

namespace {

// A float's bits as an unsigned key in the order numpy sorts: -inf .. -0, +0 .. +inf, then NaN.
inline uint32_t sort_key(float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    if (v != v) return 0xFFFFFFFFu;
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

inline float key_value(uint32_t k) {
    if (k == 0xFFFFFFFFu) return NAN;
    uint32_t u = k & 0x80000000u ? k & 0x7FFFFFFFu : ~k;
    float v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}

// The keys at sorted positions ranks[0 .. count) (ascending) of keys[0 .. n), into out: numpy's sorted
// order without sorting. Three levels of 12-bit digits, most significant first: count each digit's keys
// in one pass, gather only the buckets holding a wanted rank (one pass), and go on in those; a bucket of
// at most 256 keys is sorted. `spare` holds n keys; `keys` is reordered. count <= MAX_RANKS.
constexpr int MAX_RANKS = 16;

void select_ranks(uint32_t *keys, int64_t n, const int64_t *ranks, int count, uint32_t *out, uint32_t *spare,
                  int level = 0) {
    constexpr int BITS = 12, BUCKETS = 1 << BITS;
    static constexpr int SHIFT[3] = {20, 8, 0};  // the last digit's upper 4 bits are equal within a bucket
    if (n <= 256 || level == 3) {
        std::sort(keys, keys + n);
        for (int j = 0; j < count; ++j) out[j] = keys[ranks[j]];
        return;
    }
    const int shift = SHIFT[level];
    // per level, kept by each thread and reused (on the stack they took ~200 KB: a thread's stack may be small)
    static thread_local std::vector<int64_t> buffers[3];
    std::vector<int64_t> &buffer = buffers[level];
    buffer.assign(3 * BUCKETS, 0);
    int64_t *counts = buffer.data(), *place = counts + BUCKETS, *next = place + BUCKETS;
    std::fill(place, place + BUCKETS, -1);
    for (int64_t i = 0; i < n; ++i) ++counts[(keys[i] >> shift) & (BUCKETS - 1)];
    // each wanted rank's bucket, and where that bucket starts in sorted order
    int32_t bucket[MAX_RANKS];
    int64_t begin[MAX_RANKS];
    int64_t below = 0;
    int b = 0;
    for (int j = 0; j < count; ++j) {
        while (below + counts[b] <= ranks[j]) below += counts[b++];
        bucket[j] = b, begin[j] = below;
    }
    // gather the wanted buckets into spare, each contiguous, in bucket order
    int64_t gathered = 0;
    for (int j = 0; j < count; ++j)
        if (j == 0 || bucket[j] != bucket[j - 1]) place[bucket[j]] = gathered, gathered += counts[bucket[j]];
    for (int j = 0; j < count; ++j) next[bucket[j]] = place[bucket[j]];
    for (int64_t i = 0; i < n; ++i) {
        uint32_t d = (keys[i] >> shift) & (BUCKETS - 1);
        if (place[d] >= 0) spare[next[d]++] = keys[i];
    }
    // go on in each wanted bucket with the ranks it holds
    for (int j = 0; j < count;) {
        int k = j;
        while (k < count && bucket[k] == bucket[j]) ++k;
        int64_t local[MAX_RANKS];
        for (int m = j; m < k; ++m) local[m - j] = ranks[m] - begin[j];
        select_ranks(spare + place[bucket[j]], counts[bucket[j]], local, k - j, out + j, keys, level + 1);
        j = k;
    }
}


// numpy.percentile's default (linear) of keys[0 .. n) (reordered) at each of `count` fractions qs (at
// most MAX_RANKS / 2): numpy's arithmetic (position q * (n - 1), then its _lerp from the nearer end), on
// the two order statistics around each position, so the result is numpy's.
void percentiles(uint32_t *keys, uint32_t *spare, int64_t n, const double *qs, int count, double *out) {
    if (n == 0) {  // no values: no order statistics (numpy raises; a measurement reports NaN)
        std::fill(out, out + count, NAN);
        return;
    }
    int64_t lower[MAX_RANKS / 2], ranks[MAX_RANKS];
    for (int j = 0; j < count; ++j) {
        lower[j] = int64_t(std::floor(qs[j] * double(n - 1)));
        ranks[2 * j] = lower[j], ranks[2 * j + 1] = std::min(lower[j] + 1, n - 1);
    }
    std::sort(ranks, ranks + 2 * count);
    int unique = int(std::unique(ranks, ranks + 2 * count) - ranks);
    uint32_t found[MAX_RANKS];
    select_ranks(keys, n, ranks, unique, found, spare);
    auto value = [&](int64_t rank) { return double(key_value(found[std::lower_bound(ranks, ranks + unique, rank) - ranks])); };
    for (int j = 0; j < count; ++j) {
        double position = qs[j] * double(n - 1), frac = position - double(lower[j]);
        double below = value(lower[j]), above = value(std::min(lower[j] + 1, n - 1));
        double step = above - below;
        out[j] = frac >= 0.5 ? above - step * (1 - frac) : below + step * frac;
    }
}

}  // namespace

extern "C" {

// The tensors of one measured step and where its statistics go. Pointer arrays hold each tensor's
// data (dense: contiguous or channels-last, pairs in the same layout). A unit tensor (a preactivation's
// unit UNIT over the batch and positions) is strided: unit_shapes and unit_strides (in elements) give
// 3 dims each, padded with 1.
struct Step {
    int64_t grads, weights, outputs, activations;  // how many of each
    const float *const *grad;                       // the weights' gradients
    const int64_t *grad_sizes;
    const float *const *after, *const *before;      // the weights after and before the step
    const int64_t *weight_sizes;
    const float *const *output;                     // dL/d(layer output)
    const int64_t *output_sizes;
    const float *const *pre, *const *post;          // the nonlinearity's input and output
    const int64_t *activation_sizes;
    const float *const *unit;
    const int64_t *unit_shapes, *unit_strides;
    int kind;                                       // the saturation test (bnlab_saturated)
    int percentile_count;
    const double *qs;                               // the percentiles' fractions
    int64_t bins;                                   // histogram bins; 0: no histograms
    // Out: the scalars in bnlab.probes' tag order: grad_norm/weight, weight_norm, update_ratio,
    // grad_norm/output, preact/mean, preact/std, preact/<q> for each q, preact/unit/<q> for each q,
    // act/mean, act/std, act/saturated (each one value a layer, families with no layer left out).
    double *values;
    // Out: with bins, a histogram row (bnlab.rowstats.histogram_rows) of each preactivation, then of each
    // gradient.
    double *histograms;
};

void bnlab_step(const Step *s) {
    const int64_t A = s->activations, Q = s->percentile_count, row = 5 + 2 * s->bins;
    double *v = s->values;
    auto histogram_row = [&](const float *x, int64_t n, const Sums &m, double *h) {
        double low = m.low, high = m.high;
        double first = low == high ? low - 0.5 : low, last = low == high ? high + 0.5 : high;
        double step = (last - first) / double(s->bins);  // numpy's linspace: k * step + first, then last
        h[0] = low, h[1] = high, h[2] = double(n), h[3] = m.sum, h[4] = m.squares;
        double *counts = h + 5, *edges = h + 5 + s->bins;
        for (int64_t k = 1; k < s->bins; ++k) edges[k - 1] = double(k) * step + first;
        edges[s->bins - 1] = last;
        std::vector<int32_t> scratch(n);
        histogram(x, n, s->bins, first, last, scratch.data(), counts);  // counts 0 without finite ends
    };
    for (int64_t i = 0; i < s->grads; ++i) {
        Sums m = sums(s->grad[i], s->grad_sizes[i]);
        *v++ = std::sqrt(m.squares);
        if (s->bins) histogram_row(s->grad[i], s->grad_sizes[i], m, s->histograms + (A + i) * row);
    }
    double norms[2];
    for (int64_t i = 0; i < s->weights; ++i) {
        bnlab_update_norms(1, s->after + i, s->before + i, s->weight_sizes + i, norms);
        v[i] = norms[0], v[s->weights + i] = norms[1] / norms[0];
    }
    v += 2 * s->weights;
    for (int64_t i = 0; i < s->outputs; ++i) *v++ = std::sqrt(sums(s->output[i], s->output_sizes[i]).squares);
    std::vector<uint32_t> keys, spare;
    std::vector<double> q(Q);
    for (int64_t i = 0; i < A; ++i) {
        const float *x = s->pre[i];
        int64_t n = s->activation_sizes[i];
        Sums m = sums(x, n);
        double mean = m.sum / n;
        v[i] = mean;  // preact/mean
        v[A + i] = population_std(x, n, mean);
        keys.resize(std::max<size_t>(keys.size(), n)), spare.resize(keys.size());
        for (int64_t j = 0; j < n; ++j) keys[j] = sort_key(x[j]);
        percentiles(keys.data(), spare.data(), n, s->qs, int(Q), q.data());
        for (int64_t j = 0; j < Q; ++j) v[(2 + j) * A + i] = q[j];
        const int64_t *shape = s->unit_shapes + 3 * i, *stride = s->unit_strides + 3 * i;
        int64_t u = 0;
        keys.resize(std::max<size_t>(keys.size(), shape[0] * shape[1] * shape[2])), spare.resize(keys.size());
        for (int64_t a = 0; a < shape[0]; ++a)
            for (int64_t b = 0; b < shape[1]; ++b)
                for (int64_t c = 0; c < shape[2]; ++c)
                    keys[u++] = sort_key(s->unit[i][a * stride[0] + b * stride[1] + c * stride[2]]);
        percentiles(keys.data(), spare.data(), u, s->qs, int(Q), q.data());
        for (int64_t j = 0; j < Q; ++j) v[(2 + Q + j) * A + i] = q[j];
        const float *y = s->post[i];
        Sums p = sums(y, n);
        double post_mean = p.sum / n;
        v[(2 + 2 * Q) * A + i] = post_mean;
        v[(3 + 2 * Q) * A + i] = population_std(y, n, post_mean);
        v[(4 + 2 * Q) * A + i] = saturated_fraction(s->kind, x, y, n);
        if (s->bins) histogram_row(x, n, m, s->histograms + i * row);
    }
}

// bnlab_step on a thread of its own: returns at once; bnlab_step_wait(handle) joins it. `s` and
// everything it points to must stay untouched until then.
void *bnlab_step_start(const Step *s) { return new std::thread(bnlab_step, s); }

void bnlab_step_wait(void *handle) {
    auto *thread = static_cast<std::thread *>(handle);
    thread->join();
    delete thread;
}

}  // extern "C"
