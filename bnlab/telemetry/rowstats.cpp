// bnlab's compiled telemetry: a measured training step's statistics of float32 tensors on the CPU in one call,
// bnlab_step, which can run on a thread of its own while the next step trains (bnlab_step_start / _wait): it
// never touches Python, so it never waits for the GIL nor makes the training thread wait for it.
//
// The PyTorch path (bnlab/telemetry/statistics.py, the reference this is tested against) spends its time on
// the overhead of hundreds of small ops, not on arithmetic; here each statistic is one loop over each row.
// Every sum is accumulated in double (a float32's square is exact in double, so no norm under- or
// overflows). Histogram bins come from arithmetic, corrected against numpy's float64 edges, not from a sort;
// percentiles select their order statistics without sorting. Where each value goes is Python's layout
// (Step::placements); this file only names what it can measure (BNLAB_STATISTICS). Built by bnlab's loader
// (bnlab/nn/kernels/build.py) with the system's C++ compiler; called through ctypes (native.py).
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
    double low, high;
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
    for (int k = 0; k < LANES; ++k) s.low = std::min(s.low, double(low[k])), s.high = std::max(s.high, double(high[k]));
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

// The fraction of a row's units in the flat part of its nonlinearity (bnlab.telemetry.probes.saturated_mask): kind 1
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

// numpy's linspace edge k of `bins` bins from first to last: k * step + first (rounded twice: built with
// -ffp-contract=off), the last edge `last` itself. k is a double so that the loops using it vectorize.
inline double edge(double k, double bins, double first, double last, double step) {
    return k < bins ? k * step + first : last;
}

// numpy.histogram's bin of v among `bins` bins from first to last: a guess from arithmetic (off by at most
// one), then one correction each way against the edges, recomputed (not read from a table) so that loops over
// it have neither branches nor gathers and vectorize (-fno-trapping-math).
inline double bin_of(double v, double bins, double first, double last, double step, double scale) {
    double top = bins - 1.0, g = (v - first) * scale;
    g = g > 0.0 ? g : 0.0;  // NaN too
    double k = std::trunc(g < top ? g : top);
    double below = edge(k, bins, first, last, step), above = edge(k + 1, bins, first, last, step);
    k -= v < below && k > 0 ? 1.0 : 0.0;
    k += v >= above && k < top ? 1.0 : 0.0;  // (after a step down, v < the new upper edge)
    return k;
}

// counts[k] = how many of the n bin indices are k, for k < bins (an index of bins or more is not counted).
void tally(const int32_t *index, int64_t n, int64_t bins, double *counts) {
    int64_t tallies[4][256] = {};  // four tallies: consecutive values in one bin don't wait on each other
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; ++k) ++tallies[k][index[i + k]];
    for (; i < n; ++i) ++tallies[0][index[i]];
    for (int64_t k = 0; k < bins; ++k)
        counts[k] = double(tallies[0][k] + tallies[1][k] + tallies[2][k] + tallies[3][k]);
}

// A histogram row (bnlab.telemetry.statistics.histogram_rows: min, max, count, sum, sum of squares, then the
// counts of `bins` bins, then their right edges) of x's n values whose `sums` are `m`, as numpy.histogram(x,
// bins, range=(min, max)) makes it: bin k holds edge[k] <= x < edge[k + 1], the last bin also the maximum; a
// row of equal values gets the range (value - 0.5, value + 0.5); without finite ends nothing is counted.
// bins <= 255; `scratch` holds n bin indices.
void histogram_row(const float *x, int64_t n, const Sums &m, int64_t bins, int32_t *scratch, double *row) {
    double low = m.low, high = m.high;
    double first = low == high ? low - 0.5 : low, last = low == high ? high + 0.5 : high;
    double step = (last - first) / double(bins), scale = double(bins) / (last - first);
    row[0] = low, row[1] = high, row[2] = double(n), row[3] = m.sum, row[4] = m.squares;
    double *counts = row + 5, *right_edges = row + 5 + bins;
    for (int64_t k = 1; k <= bins; ++k) right_edges[k - 1] = edge(double(k), double(bins), first, last, step);
    std::fill(counts, counts + bins, 0.0);
    if (!std::isfinite(first) || !std::isfinite(last) || !(last > first)) return;
    double outside = double(bins);  // the bin index of a value outside the edges, or NaN
    for (int64_t i = 0; i < n; ++i) {
        double v = x[i], k = bin_of(v, outside, first, last, step, scale);
        scratch[i] = int32_t(v >= first && v <= last ? k : outside);
    }
    tally(scratch, n, bins, counts);
}

// log10 x of a positive normal double, to within about an ulp: fdlibm's log (e_log.c) without its branches,
// so that loops over it vectorize. Only the sums of a log10 histogram use it; its min, max and bins come from
// std::log10 itself.
inline double fast_log10(double x) {
    constexpr double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
    constexpr double LG1 = 6.666666666666735130e-01, LG2 = 3.999999999940941908e-01, LG3 = 2.857142874366239149e-01,
                     LG4 = 2.222219843214978396e-01, LG5 = 1.818357216161805012e-01, LG6 = 1.531383769920937332e-01,
                     LG7 = 1.479819860511658591e-01, INV_LN10 = 4.34294481903251816668e-01;
    uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    uint64_t mantissa = bits & 0x000FFFFFFFFFFFFFull;
    // x = 2^k * m with m in [sqrt(2)/2, sqrt(2)): the exponent is 1023 or 1022 by whether m >= sqrt(2)
    uint64_t up = (mantissa + 0x00095F6400000000ull) & 0x0010000000000000ull;
    double k = double(int64_t(bits >> 52) - 1023 + int64_t(up >> 52));
    uint64_t m_bits = mantissa | (up ^ 0x3FF0000000000000ull);
    double m;
    std::memcpy(&m, &m_bits, sizeof m);
    double f = m - 1.0, s = f / (2.0 + f), z = s * s, w = z * z;
    double r = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7))) + w * (LG2 + w * (LG4 + w * LG6));
    double half_f2 = 0.5 * f * f;
    double ln = k * LN2_HI - ((half_f2 - (s * (half_f2 + r) + k * LN2_LO)) - f);
    return ln * INV_LN10;
}

// The histogram row (as histogram_row) of log10 |x| over x's nonzero values, NaN left out, as numpy.histogram
// bins their std::log10 (bnlab.telemetry.statistics.log10_magnitude_rows bins numpy.log10's, which can differ
// in the last bit); a row of zeros if there are none. The min and max are std::log10 of the smallest and
// largest magnitude (log10 increases). Each value is binned by fast_log10, unless that lies within NEAR of an
// edge, where std::log10 might fall on the other side: those few are binned by std::log10 as numpy bins.
// `logs` holds n logarithms, `scratch` n bin indices.
void log10_histogram_row(const float *x, int64_t n, int64_t bins, double *logs, int32_t *scratch, double *row) {
    // in log10 units: beyond fast_log10's error (~1 ulp) plus the edges' rounding (a few ulps of 46, the largest
    // |log10| of a float32)
    constexpr double NEAR = 1e-13;
    auto in = [x](int64_t i) { return std::fabs(x[i]) > 0.0f; };  // binned: neither 0 nor NaN
    for (int64_t i = 0; i < n; ++i) logs[i] = fast_log10(in(i) ? std::fabs(x[i]) : 1.0f);  // log 1 = 0: no sum
    double sum = lane_sum(n, [logs](int64_t i) { return logs[i]; });
    double squares = lane_sum(n, [logs](int64_t i) { return logs[i] * logs[i]; });
    double count = lane_sum(n, [in](int64_t i) { return in(i) ? 1.0 : 0.0; });
    float low[LANES], high[LANES];
    std::fill(low, low + LANES, INFINITY), std::fill(high, high + LANES, 0.0f);
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; ++k) {
            float a = std::fabs(x[i + k]);  // NaN never replaces an extreme; a zero not the smallest
            low[k] = a > 0.0f && a < low[k] ? a : low[k], high[k] = a > high[k] ? a : high[k];
        }
    for (; i < n; ++i) {
        float a = std::fabs(x[i]);
        low[0] = a > 0.0f && a < low[0] ? a : low[0], high[0] = a > high[0] ? a : high[0];
    }
    float smallest = *std::min_element(low, low + LANES), largest = *std::max_element(high, high + LANES);
    std::fill(row, row + 5 + 2 * bins, 0.0);
    if (count == 0) return;
    bool infinite = std::isinf(largest);  // log10(inf) = inf: the sums are inf, and nothing is binned
    double lowest = std::log10(double(smallest)), highest = std::log10(double(largest));
    row[0] = lowest, row[1] = highest, row[2] = count;
    row[3] = infinite ? INFINITY : sum, row[4] = infinite ? INFINITY : squares;
    double first = lowest == highest ? lowest - 0.5 : lowest, last = lowest == highest ? highest + 0.5 : highest;
    double step = (last - first) / double(bins), scale = double(bins) / (last - first), b = double(bins);
    for (int64_t k = 1; k <= bins; ++k) row[5 + bins + k - 1] = edge(double(k), b, first, last, step);
    if (infinite) return;
    // A value whose position g (in bins) is no nearer than `tolerance` to a whole number is in bin floor(g)
    // however its logarithm rounds; the others (the min and max among them) are binned as numpy bins them.
    double tolerance = NEAR * scale + 1e-12, top = double(bins - 1);
    for (i = 0; i < n; ++i) {
        double g = (logs[i] - first) * scale;
        g = g > 0.0 ? g : 0.0;
        double k = std::trunc(g < top ? g : top), fraction = g - k;
        bool near = fraction < tolerance || fraction > 1.0 - tolerance;
        scratch[i] = !in(i) ? int32_t(bins) : near ? -1 : int32_t(k);
    }
    for (i = 0; i < n; ++i)
        if (scratch[i] < 0)
            scratch[i] = int32_t(bin_of(std::log10(double(std::fabs(x[i]))), b, first, last, step, scale));
    tally(scratch, n, bins, row + 5);
}

// The L2 norm of a row, summed in double.
double norm(const float *x, int64_t n) {
    return std::sqrt(lane_sum(n, [x](int64_t i) { return double(x[i]) * double(x[i]); }));
}

// The L2 norm of after - before, each difference exact in double.
double difference_norm(const float *after, const float *before, int64_t n) {
    return std::sqrt(lane_sum(n, [=](int64_t i) {
        double step = double(after[i]) - before[i];
        return step * step;
    }));
}

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
    auto value = [&](int64_t rank) {
        return double(key_value(found[std::lower_bound(ranks, ranks + unique, rank) - ranks]));
    };
    for (int j = 0; j < count; ++j) {
        double position = qs[j] * double(n - 1), frac = position - double(lower[j]);
        double below = value(lower[j]), above = value(std::min(lower[j] + 1, n - 1));
        double step = above - below;
        out[j] = frac >= 0.5 ? above - step * (1 - frac) : below + step * frac;
    }
}

// The statistics bnlab_step measures, by the names Python's layout gives them (bnlab.telemetry.probes.SCALARS
// and HISTOGRAMS); bnlab_statistics() lists them in this order, the order of Step::placements. Adding one: its
// name here, its loop in bnlab_step.
#define BNLAB_STATISTICS(X)                                                                                      \
    X(grad_norm) X(weight_norm) X(update_ratio) X(output_grad_norm) X(preact_mean) X(preact_std)              \
    X(preact_percentile) X(unit_percentile) X(act_mean) X(act_std) X(act_saturated) X(preact_histogram)      \
    X(grad_histogram) X(grad_log10_histogram)
#define BNLAB_ENUM(name) name,
#define BNLAB_NAME(name) #name " "
enum class Statistic { BNLAB_STATISTICS(BNLAB_ENUM) COUNT };

bool is_histogram(Statistic which) {
    return which == Statistic::preact_histogram || which == Statistic::grad_histogram ||
           which == Statistic::grad_log10_histogram;
}

}  // namespace

extern "C" {

// Where one statistic's values go, as Python's layout places them: for each of `count` places (0: not
// measured), layer i's value at values[offsets[j] + i] (a histogram: its row at histograms[offsets[j] + i]);
// a percentile's place j holds the fraction qs[j].
struct Placement {
    int64_t count;
    const int64_t *offsets;
    const double *qs;
};

// The tensors of one measured step and where its statistics go. Pointer arrays hold each tensor's
// data (dense: contiguous or channels-last, pairs in the same layout). A unit tensor (a preactivation's
// unit over the batch and positions) is strided: unit_shapes and unit_strides (in elements) give
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
    int kind;                                       // the saturation test (saturated_fraction)
    int64_t bins;                                   // histogram bins (<= 255)
    const Placement *placements;                    // one per Statistic
    int64_t value_count, histogram_count;           // the sizes of values and of histograms (rows)
    double *values;                                 // out: the scalars
    double *histograms;                             // out: rows of 5 + 2 bins (histogram_row)
};

namespace {

// How many layers statistic `which` has a value for in step s.
int64_t layers(const Step *s, Statistic which) {
    switch (which) {
        case Statistic::grad_norm: case Statistic::grad_histogram: case Statistic::grad_log10_histogram:
            return s->grads;
        case Statistic::weight_norm: case Statistic::update_ratio: return s->weights;
        case Statistic::output_grad_norm: return s->outputs;
        default: return s->activations;
    }
}

}  // namespace

// -1 if bnlab_step can fill every placement of s: each within its output (values or histogram rows), at most
// MAX_RANKS / 2 percentiles of a statistic, 1 to 255 bins where there are histograms; else the first
// statistic (its index in Step::placements) it cannot. Called before bnlab_step, which trusts it.
int bnlab_step_check(const Step *s) {
    for (int k = 0; k < int(Statistic::COUNT); ++k) {
        Statistic which = Statistic(k);
        const Placement &p = s->placements[k];
        int64_t size = is_histogram(which) ? s->histogram_count : s->value_count;
        if (p.count > MAX_RANKS / 2 || (p.count && is_histogram(which) && !(s->bins >= 1 && s->bins <= 255)))
            return k;
        for (int64_t j = 0; j < p.count; ++j)
            if (p.offsets[j] < 0 || p.offsets[j] + layers(s, which) > size) return k;
    }
    return -1;
}

// The names of the statistics bnlab_step measures, separated by spaces, in the order of Step::placements.
const char *bnlab_statistics() { return BNLAB_STATISTICS(BNLAB_NAME); }

void bnlab_step(const Step *s) {
    auto at = [s](Statistic which) -> const Placement & { return s->placements[int(which)]; };
    auto wanted = [&](Statistic which) { return at(which).count > 0; };
    auto put = [&](Statistic which, int64_t layer, double value) {
        const Placement &p = at(which);
        for (int64_t j = 0; j < p.count; ++j) s->values[p.offsets[j] + layer] = value;
    };
    const int64_t width = 5 + 2 * s->bins;
    std::vector<int32_t> scratch;
    // a histogram statistic's row of this layer, written by fill(row, scratch) into its first place, copied to the rest
    auto put_row = [&](Statistic which, int64_t layer, int64_t n, auto fill) {
        const Placement &p = at(which);
        if (p.count == 0) return;
        double *first = s->histograms + (p.offsets[0] + layer) * width;
        scratch.resize(std::max<size_t>(scratch.size(), n));
        fill(first, scratch.data());
        for (int64_t j = 1; j < p.count; ++j)
            std::copy(first, first + width, s->histograms + (p.offsets[j] + layer) * width);
    };
    auto put_histogram = [&](Statistic which, int64_t layer, const float *x, int64_t n, const Sums &m) {
        put_row(which, layer, n, [&](double *row, int32_t *bins) { histogram_row(x, n, m, s->bins, bins, row); });
    };
    std::vector<double> logs;
    auto put_log10_histogram = [&](int64_t layer, const float *x, int64_t n) {
        logs.resize(std::max<size_t>(logs.size(), n));
        put_row(Statistic::grad_log10_histogram, layer, n,
                [&](double *row, int32_t *bins) { log10_histogram_row(x, n, s->bins, logs.data(), bins, row); });
    };
    std::vector<uint32_t> keys, spare;
    auto put_percentiles = [&](Statistic which, int64_t layer, int64_t n) {  // of keys[0 .. n)
        const Placement &p = at(which);
        double q[MAX_RANKS / 2];
        percentiles(keys.data(), spare.data(), n, p.qs, int(p.count), q);
        for (int64_t j = 0; j < p.count; ++j) s->values[p.offsets[j] + layer] = q[j];
    };

    for (int64_t i = 0; i < s->grads && (wanted(Statistic::grad_norm) || wanted(Statistic::grad_histogram) ||
                                         wanted(Statistic::grad_log10_histogram)); ++i) {
        Sums m = sums(s->grad[i], s->grad_sizes[i]);
        put(Statistic::grad_norm, i, std::sqrt(m.squares));
        put_histogram(Statistic::grad_histogram, i, s->grad[i], s->grad_sizes[i], m);
        put_log10_histogram(i, s->grad[i], s->grad_sizes[i]);
    }
    for (int64_t i = 0; i < s->weights; ++i) {
        const float *after = s->after[i], *before = s->before[i];
        int64_t n = s->weight_sizes[i];
        if (wanted(Statistic::weight_norm)) put(Statistic::weight_norm, i, norm(after, n));
        // ||W after - W before|| / ||W before||: the step's size relative to the weights it changed
        if (wanted(Statistic::update_ratio))
            put(Statistic::update_ratio, i, difference_norm(after, before, n) / norm(before, n));
    }
    for (int64_t i = 0; i < s->outputs && wanted(Statistic::output_grad_norm); ++i)
        put(Statistic::output_grad_norm, i, norm(s->output[i], s->output_sizes[i]));
    for (int64_t i = 0; i < s->activations; ++i) {
        const float *x = s->pre[i], *y = s->post[i];
        int64_t n = s->activation_sizes[i];
        if (wanted(Statistic::preact_mean) || wanted(Statistic::preact_std) || wanted(Statistic::preact_histogram)) {
            Sums m = sums(x, n);
            double mean = m.sum / n;
            put(Statistic::preact_mean, i, mean);
            if (wanted(Statistic::preact_std)) put(Statistic::preact_std, i, population_std(x, n, mean));
            put_histogram(Statistic::preact_histogram, i, x, n, m);
        }
        if (wanted(Statistic::preact_percentile)) {
            keys.resize(std::max<size_t>(keys.size(), n)), spare.resize(keys.size());
            for (int64_t j = 0; j < n; ++j) keys[j] = sort_key(x[j]);
            put_percentiles(Statistic::preact_percentile, i, n);
        }
        if (wanted(Statistic::unit_percentile)) {
            const int64_t *shape = s->unit_shapes + 3 * i, *stride = s->unit_strides + 3 * i;
            int64_t u = 0;
            keys.resize(std::max<size_t>(keys.size(), shape[0] * shape[1] * shape[2])), spare.resize(keys.size());
            for (int64_t a = 0; a < shape[0]; ++a)
                for (int64_t b = 0; b < shape[1]; ++b)
                    for (int64_t c = 0; c < shape[2]; ++c)
                        keys[u++] = sort_key(s->unit[i][a * stride[0] + b * stride[1] + c * stride[2]]);
            put_percentiles(Statistic::unit_percentile, i, u);
        }
        if (wanted(Statistic::act_mean) || wanted(Statistic::act_std)) {
            double mean = lane_sum(n, [y](int64_t j) { return double(y[j]); }) / n;
            put(Statistic::act_mean, i, mean);
            if (wanted(Statistic::act_std)) put(Statistic::act_std, i, population_std(y, n, mean));
        }
        if (wanted(Statistic::act_saturated)) put(Statistic::act_saturated, i, saturated_fraction(s->kind, x, y, n));
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
