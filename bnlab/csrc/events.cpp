// TensorBoard's Summary protobuf of one step's scalars or histograms, encoded in one call.
//
// Building hundreds of Summary.Value objects in Python costs more than the statistics in them
// (~1 ms a step); these loops write the same bytes protobuf would (bnlab/writer.py parses them
// back into an Event, and the tests compare them byte for byte with protobuf's own encoding).
// Wire format: each field is a key (field number << 3 | wire type) then its value; a nested
// message or string is a length-delimited field (type 2); a float is 4 bytes (type 5), a double 8
// (type 1), both little-endian; proto3 leaves out a double whose bits are all zero.
#include <cstdint>
#include <cstring>

namespace {

uint8_t *varint(uint64_t value, uint8_t *out) {
    while (value >= 0x80) *out++ = uint8_t(value | 0x80), value >>= 7;
    *out++ = uint8_t(value);
    return out;
}

int varint_size(uint64_t value) {
    int size = 1;
    while (value >= 0x80) value >>= 7, ++size;
    return size;
}

template <typename T>
uint8_t *raw(T value, uint8_t *out) {  // little-endian hosts only (x86, arm64): the bytes as they lie
    std::memcpy(out, &value, sizeof value);
    return out + sizeof value;
}

// A Value's tag field: key 0x0A (field 1, a string), then the tag's length and bytes; proto3 leaves out an
// empty string.
int64_t tag_size(int64_t length) { return length ? 1 + varint_size(length) + length : 0; }

uint8_t *tag_field(const char *tag, int64_t length, uint8_t *out) {
    if (length == 0) return out;
    *out++ = 0x0A;
    out = varint(length, out);
    std::memcpy(out, tag, length);
    return out + length;
}

uint8_t *double_field(int field, double value, uint8_t *out) {
    uint64_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    if (bits == 0) return out;  // proto3: +0.0 is the default, not written (-0.0 is)
    *out++ = uint8_t(field << 3 | 1);
    return raw(value, out);
}

}  // namespace

extern "C" {

// Summary { repeated Value value = 1 }, Value { string tag = 1; float simple_value = 2 }: one Value per
// tag. `tags` holds the tags' bytes one after another, tag i from offsets[i] to offsets[i + 1]; values
// are rounded to float as protobuf rounds them. `out` needs bnlab_scalar_summary_size bytes; returns
// the bytes written.
int64_t bnlab_scalar_summary(int64_t count, const char *tags, const int64_t *offsets, const double *values,
                             uint8_t *out) {
    uint8_t *start = out;
    for (int64_t i = 0; i < count; ++i) {
        int64_t length = offsets[i + 1] - offsets[i];
        *out++ = 0x0A;  // Summary.value
        out = varint(tag_size(length) + 5, out);
        out = tag_field(tags + offsets[i], length, out);
        *out++ = 0x15;  // simple_value (field 2, a float: in a oneof, so written even when 0)
        out = raw(float(values[i]), out);
    }
    return out - start;
}

int64_t bnlab_scalar_summary_size(int64_t count, const int64_t *offsets) {
    int64_t size = 0;
    for (int64_t i = 0; i < count; ++i) {
        int64_t value = tag_size(offsets[i + 1] - offsets[i]) + 5;
        size += 1 + varint_size(value) + value;
    }
    return size;
}

// Summary of one HistogramProto per tag, Value { string tag = 1; HistogramProto histo = 5 }, from rows of
// `5 + 2 * bins` doubles (bnlab.rowstats.histogram_rows): min, max, num, sum, sum_squares (fields 1-5),
// then the bins' counts (bucket = 7) and right edges (bucket_limit = 6), each a packed repeated double.
// `out` needs bnlab_histogram_summary_size bytes; returns the bytes written.
int64_t bnlab_histogram_summary(int64_t count, const char *tags, const int64_t *offsets, const double *rows,
                                int64_t bins, uint8_t *out) {
    uint8_t *start = out;
    uint8_t histogram[5 * 9 + 2 * (1 + 10) + 2 * 8 * 256];
    if (bins > 256) return -1;
    for (int64_t i = 0; i < count; ++i) {
        const double *row = rows + i * (5 + 2 * bins);
        uint8_t *h = histogram;
        for (int field = 1; field <= 5; ++field) h = double_field(field, row[field - 1], h);
        if (bins > 0) {
            *h++ = 0x32;  // bucket_limit (field 6, packed)
            h = varint(8 * bins, h);
            std::memcpy(h, row + 5 + bins, 8 * bins);
            h += 8 * bins;
            *h++ = 0x3A;  // bucket (field 7, packed)
            h = varint(8 * bins, h);
            std::memcpy(h, row + 5, 8 * bins);
            h += 8 * bins;
        }
        int64_t length = offsets[i + 1] - offsets[i], histogram_size = h - histogram;
        int64_t value_size = tag_size(length) + 1 + varint_size(histogram_size) + histogram_size;
        *out++ = 0x0A;  // Summary.value
        out = varint(value_size, out);
        out = tag_field(tags + offsets[i], length, out);
        *out++ = 0x2A;  // histo (field 5, a message)
        out = varint(histogram_size, out);
        std::memcpy(out, histogram, histogram_size);
        out += histogram_size;
    }
    return out - start;
}

int64_t bnlab_histogram_summary_size(int64_t count, const int64_t *offsets, int64_t bins) {
    int64_t histogram = 5 * 9 + 2 * (1 + varint_size(8 * bins) + 8 * bins);  // at most
    int64_t size = 0;
    for (int64_t i = 0; i < count; ++i) {
        int64_t value = tag_size(offsets[i + 1] - offsets[i]) + 1 + varint_size(histogram) + histogram;
        size += 1 + varint_size(value) + value;
    }
    return size;
}

}  // extern "C"
