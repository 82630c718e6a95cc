// bnlab's BatchNorm (training mode) of float32 CPU tensors, forward and backward, each one call.
//
// The same arithmetic as bnlab/nn/functional.py (its reference), in as few passes over memory as the
// math allows: forward reads x twice (mean, then squared deviations: two passes keep the variance exact
// for a large mean) and writes y once; backward reads dy and x once for both sums and once more for dx.
// Per-channel sums accumulate in double. x is an (N, C, S) view with element strides (sn, sc, ss): either
// channels outer (ss == 1: each channel's S values contiguous, as in NCHW) or channels inner (sc == 1:
// a position's C channels contiguous, as in (N, C) and channels-last NHWC); dy and dx share x's layout.
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

struct View {
    int64_t n, c, s, sn, sc, ss;
    bool channels_inner() const { return sc == 1 && c > 1; }
};

// For each channel, sum over its values of term(channel, pointer offset of one contiguous run, run length).
// Channels outer: per (n, c) a run of S values. Channels inner: per (n, s) a run of C channels, where the
// sums are taken across the run into per-channel accumulators instead.
template <typename Term>
void channel_sums(const View &v, std::vector<double> &out, Term term) {
    out.assign(v.c, 0.0);
    if (v.channels_inner()) {
        for (int64_t n = 0; n < v.n; ++n)
            for (int64_t s = 0; s < v.s; ++s) {
                int64_t base = n * v.sn + s * v.ss;
                for (int64_t c = 0; c < v.c; ++c) out[c] += term(c, base + c);
            }
        return;
    }
    for (int64_t c = 0; c < v.c; ++c) {
        double lanes[8] = {};
        for (int64_t n = 0; n < v.n; ++n) {
            int64_t base = n * v.sn + c * v.sc, s = 0;
            for (; s + 8 <= v.s; s += 8)
                for (int k = 0; k < 8; ++k) lanes[k] += term(c, base + (s + k) * v.ss);
            for (; s < v.s; ++s) lanes[0] += term(c, base + s * v.ss);
        }
        for (int k = 0; k < 8; ++k) out[c] += lanes[k];
    }
}

// Both sums of backward in one pass over dy and x: sum(dy) and sum(dy * (x - mean)) per channel.
void gradient_sums(const View &v, const float *dy, const float *x, const float *mean, std::vector<double> &sum_dy,
                   std::vector<double> &sum_dy_xmu) {
    sum_dy.assign(v.c, 0.0), sum_dy_xmu.assign(v.c, 0.0);
    if (v.channels_inner()) {
        for (int64_t n = 0; n < v.n; ++n)
            for (int64_t s = 0; s < v.s; ++s) {
                int64_t base = n * v.sn + s * v.ss;
                for (int64_t c = 0; c < v.c; ++c) {
                    double g = dy[base + c];
                    sum_dy[c] += g, sum_dy_xmu[c] += g * (double(x[base + c]) - double(mean[c]));
                }
            }
        return;
    }
    for (int64_t c = 0; c < v.c; ++c) {
        double a[8] = {}, b[8] = {}, m = mean[c];
        for (int64_t n = 0; n < v.n; ++n) {
            const float *g = dy + n * v.sn + c * v.sc, *h = x + n * v.sn + c * v.sc;
            int64_t s = 0;
            for (; s + 8 <= v.s; s += 8)
                for (int k = 0; k < 8; ++k) a[k] += g[s + k], b[k] += double(g[s + k]) * (double(h[s + k]) - m);
            for (; s < v.s; ++s) a[0] += g[s], b[0] += double(g[s]) * (double(h[s]) - m);
        }
        for (int k = 0; k < 8; ++k) sum_dy[c] += a[k], sum_dy_xmu[c] += b[k];
    }
}

// out[i] = a[c] * p[i] + b[c] * q[i] + d[c] for every element i of channel c (q may be null).
void per_channel_affine(const View &v, const float *p, const float *q, const float *a, const float *b,
                        const float *d, float *out) {
    for (int64_t n = 0; n < v.n; ++n) {
        if (v.channels_inner()) {
            for (int64_t s = 0; s < v.s; ++s) {
                int64_t base = n * v.sn + s * v.ss;
                if (q)
                    for (int64_t c = 0; c < v.c; ++c) out[base + c] = a[c] * p[base + c] + b[c] * q[base + c] + d[c];
                else
                    for (int64_t c = 0; c < v.c; ++c) out[base + c] = a[c] * p[base + c] + d[c];
            }
            continue;
        }
        for (int64_t c = 0; c < v.c; ++c) {
            int64_t base = n * v.sn + c * v.sc;
            float ac = a[c], dc = d[c], bc = q ? b[c] : 0.0f;
            if (q)
                for (int64_t s = 0; s < v.s; ++s) out[base + s] = ac * p[base + s] + bc * q[base + s] + dc;
            else
                for (int64_t s = 0; s < v.s; ++s) out[base + s] = ac * p[base + s] + dc;
        }
    }
}

}  // namespace

extern "C" {

// y = (x - mean) * invstd * weight + bias with the batch's mean and biased variance; writes y and the
// per-channel mean, var, invstd = 1 / sqrt(var + eps) and scale = weight * invstd (weight, bias: null for 1, 0).
// Channels outer requires ss == 1.
void bnlab_bn_forward(const float *x, int64_t n, int64_t c, int64_t s, int64_t sn, int64_t sc, int64_t ss,
                      const float *weight, const float *bias, double eps, float *y, float *mean, float *var,
                      float *invstd, float *scale) {
    View v{n, c, s, sn, sc, ss};
    double count = double(n) * double(s);
    std::vector<double> sums, mu(c);
    channel_sums(v, sums, [x](int64_t, int64_t i) { return double(x[i]); });
    for (int64_t k = 0; k < c; ++k) mu[k] = sums[k] / count;
    channel_sums(v, sums, [x, &mu](int64_t k, int64_t i) {
        double d = double(x[i]) - mu[k];
        return d * d;
    });
    std::vector<float> shift(c);
    for (int64_t k = 0; k < c; ++k) {
        double variance = sums[k] / count, inv = 1.0 / std::sqrt(variance + eps);
        double w = weight ? weight[k] : 1.0, b = bias ? bias[k] : 0.0;
        mean[k] = float(mu[k]), var[k] = float(variance), invstd[k] = float(inv), scale[k] = float(w * inv);
        shift[k] = float(b - mu[k] * w * inv);
    }
    per_channel_affine(v, x, nullptr, scale, nullptr, shift.data(), y);
}

// The gradients of bnlab_bn_forward for its saved mean, invstd and scale: grad_bias = sum(dy),
// grad_weight = sum(dy * (x - mean)) * invstd and, with need_dx,
// dx = scale * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))).
void bnlab_bn_backward(const float *dy, const float *x, int64_t n, int64_t c, int64_t s, int64_t sn, int64_t sc,
                       int64_t ss, const float *mean, const float *invstd, const float *scale, int need_dx,
                       float *dx, float *grad_weight, float *grad_bias) {
    View v{n, c, s, sn, sc, ss};
    double count = double(n) * double(s);
    std::vector<double> sum_dy, sum_dy_xmu;
    gradient_sums(v, dy, x, mean, sum_dy, sum_dy_xmu);
    std::vector<float> k_x(c), k_0(c);
    for (int64_t k = 0; k < c; ++k) {
        grad_bias[k] = float(sum_dy[k]);
        grad_weight[k] = float(sum_dy_xmu[k] * invstd[k]);
        double i2 = double(invstd[k]) * invstd[k];
        double kx = -double(scale[k]) * i2 * sum_dy_xmu[k] / count;  // the factor of x
        k_x[k] = float(kx);
        k_0[k] = float(-double(scale[k]) * sum_dy[k] / count - kx * mean[k]);
    }
    if (need_dx) per_channel_affine(v, dy, x, scale, k_x.data(), k_0.data(), dx);
}

}  // extern "C"
