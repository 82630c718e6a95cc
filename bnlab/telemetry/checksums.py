"""Fast checksums for TensorBoard's event files.

Every record of an event file carries a masked CRC32C of its header and of its data.
Without TensorFlow, TensorBoard computes it in pure Python, a table lookup per byte:
2.2 ms for a 10 KB record, holding the GIL. bnlab writes a few hundred scalars and
dozens of histograms per logged step and PNG images of ~100 KB, so on the event
writer's thread that checksum cost more training time than the statistics did.
`install()` points TensorBoard's writer and reader at google-crc32c's C implementation
of the same function (tested against TensorBoard's own on random data); without it
(or with only its pure-Python fallback) nothing changes.
"""

from __future__ import annotations

_installed = False


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: the CRC rotated right by 15 bits plus a constant, mod 2^32."""
    import google_crc32c

    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def install() -> bool:
    """Use the C checksum in TensorBoard's record writer and reader; True if it is in use."""
    global _installed
    if _installed:
        return True
    try:
        import google_crc32c
    except ImportError:
        return False
    if google_crc32c.implementation != "c":
        return False
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer

    record_writer.masked_crc32c = masked_crc32c  # imported by name there
    pywrap_tensorflow.masked_crc32c = masked_crc32c  # looked up at call time by the record reader
    _installed = True
    return True
