"""Tests of the logits wire format: round trips, reordering, and every rejection."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from nebula.common.wire import (
    HEADER_SIZE,
    WIRE_DTYPES,
    DecodedLogits,
    WireFormatError,
    decode_logits,
    encode_logits,
    payload_nbytes,
)

N, C = 7, 5


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.permutation(100)[:N].astype(np.int64)
    logits = (rng.normal(size=(N, C)) * 4).astype(np.float32)
    logits[2] = 0.0  # an all-zero row exercises the int8 zero-scale path
    return ids, logits


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_round_trip(data, dtype):
    ids, logits = data
    blob = encode_logits(ids, logits, dtype=dtype)
    out = decode_logits(blob)
    assert isinstance(out, DecodedLogits)
    assert out.ids.dtype == np.int64 and out.logits.dtype == np.float32
    assert out.logits.shape == (N, C)
    np.testing.assert_array_equal(out.ids, ids)
    err = np.abs(out.logits - logits)
    if dtype == "float32":
        np.testing.assert_array_equal(out.logits, logits)
    elif dtype == "float16":
        assert (err <= np.abs(logits) * 2.0**-11 + 2.0**-24).all()
    else:
        scale = np.abs(logits).max(axis=1, keepdims=True) / 127  # (N, 1)
        assert (err <= scale / 2 + 1e-6).all()
        np.testing.assert_array_equal(out.logits[2], 0.0)
    out.logits[0, 0] = 1.0  # decoded arrays are writable copies


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_payload_nbytes_is_exact(data, dtype):
    ids, logits = data
    assert payload_nbytes(N, C, dtype=dtype) == len(encode_logits(ids, logits, dtype=dtype))
    assert payload_nbytes(1, 1, dtype=dtype) == len(encode_logits([3], [[0.5]], dtype=dtype))


def test_float16_overflow_saturates():
    blob = encode_logits(np.array([0]), np.array([[1e6, -1e6, 1.0]]), dtype="float16")
    out = decode_logits(blob).logits
    np.testing.assert_array_equal(out, [[65504.0, -65504.0, 1.0]])


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_reorders_to_expected_ids(data, dtype):
    ids, logits = data
    expected = ids[::-1].copy()
    out = decode_logits(encode_logits(ids, logits, dtype=dtype), expected_ids=expected, num_classes=C)
    np.testing.assert_array_equal(out.ids, expected)
    ref = decode_logits(encode_logits(ids, logits, dtype=dtype)).logits
    np.testing.assert_array_equal(out.logits, ref[::-1])


# -- encode refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, logits, kwargs, match",
    [
        (np.arange(3), np.zeros(3), {}, "2-D"),
        (np.arange(3), np.zeros((3, 2, 1)), {}, "2-D"),
        (np.arange(2), np.zeros((3, 2)), {}, "2 entries but logits has 3 rows"),
        (np.array([1, 1, 2]), np.zeros((3, 2)), {}, "duplicates"),
        (np.array([-1, 1, 2]), np.zeros((3, 2)), {}, ">= 0"),
        (np.arange(3.0), np.zeros((3, 2)), {}, "integer"),
        (np.arange(3), np.array([[0, np.nan]] * 3), {}, "non-finite"),
        (np.arange(3), np.array([[0, np.inf]] * 3), {}, "non-finite"),
        (np.arange(3), np.full((3, 2), 1e300), {}, "non-finite"),
        (np.arange(0), np.zeros((0, 2)), {}, "N"),
        (np.arange(3), np.zeros((3, 2)), {"dtype": "bfloat16"}, "dtype must be one of"),
    ],
)
def test_encode_rejects(ids, logits, kwargs, match):
    with pytest.raises(WireFormatError, match=match):
        encode_logits(ids, logits, **kwargs)


# -- decode refuses ---------------------------------------------------------------------


def _blob(dtype: str = "float32", ids=None, logits=None) -> bytes:
    ids = np.arange(4) if ids is None else ids
    logits = np.arange(12, dtype=np.float32).reshape(4, 3) if logits is None else logits
    return encode_logits(ids, logits, dtype=dtype)


def _patch(blob: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def _sealed(blob: bytes | bytearray) -> bytes:
    """``blob`` with its CRC recomputed: a hostile sender's payload, consistent but for what it changed."""
    b = bytearray(blob)
    struct.pack_into("<I", b, 16, zlib.crc32(bytes(b[HEADER_SIZE:]), zlib.crc32(bytes(b[:16]))))
    return bytes(b)


def _raw(ids, values: np.ndarray, *, code: int = 2) -> bytes:
    """A blob built by hand, bypassing the encoder's checks (as a hostile sender would)."""
    n, c = values.shape
    body = np.asarray(ids, "<i8").tobytes() + values.astype("<f4").tobytes()
    return _sealed(struct.pack("<4sBBHIII", b"NBLG", 2, code, 0, n, c, 0) + body)


def _v1(ids, values: np.ndarray) -> bytes:
    """A version-1 payload (16-byte header, no CRC), as nebula-fd 0.1 wrote them."""
    n, c = values.shape
    header = struct.pack("<4sBBHII", b"NBLG", 1, 2, 0, n, c)
    return header + np.asarray(ids, "<i8").tobytes() + values.astype("<f4").tobytes()


@pytest.mark.parametrize(
    "blob, kwargs, match",
    [
        (_patch(_blob(), 0, "4s", b"XXXX"), {}, "bad magic"),
        (_patch(_blob(), 4, "<B", 9), {}, "unsupported format version 9"),
        (_patch(_blob(), 5, "<B", 7), {}, "unknown dtype code 7"),
        (_patch(_blob(), 5, "<B", 0), {}, "unknown dtype code 0"),
        (_patch(_blob(), 6, "<H", 1), {}, "reserved"),
        (_patch(_blob(), 8, "<I", 0), {}, r"N \(rows\)"),
        (_patch(_blob(), 12, "<I", 0), {}, r"C \(classes\)"),
        (_patch(_blob(), 8, "<I", 2**32 - 1), {}, r"N \(rows\)"),
        (_patch(_blob(), 12, "<I", 2**20 + 1), {}, r"C \(classes\)"),
        (_blob()[:-1], {}, "truncated"),
        (_blob()[:10], {}, "truncated"),
        (b"", {}, "truncated"),
        (_blob() + b"\x00", {}, "over-long"),
        (_patch(_blob("float16"), 5, "<B", 2), {}, "truncated"),  # float16 body read as float32
        (_blob(), {"num_classes": 4}, "expected 4, got 3"),
        (_raw([0, 1], np.array([[0.0, np.nan], [1.0, 2.0]])), {}, "non-finite"),
        (_raw([0, 1], np.array([[0.0, np.inf], [1.0, 2.0]])), {}, "non-finite"),
        (_raw([0, 1], np.array([[0.0, -np.inf], [1.0, 2.0]])), {}, "non-finite"),
        (_raw([5, 5], np.zeros((2, 3))), {}, r"duplicates: \[5\]"),
        (_raw([-3, 5], np.zeros((2, 3))), {}, ">= 0"),
        (_blob(), {"expected_ids": np.array([0, 1, 2, 9])}, r"not in expected_ids: \[3\]"),
        (_blob(), {"expected_ids": np.arange(6)}, "payload has 4 rows, 6 public inputs were asked for"),
        (
            _blob(ids=np.array([0, 1, 7]), logits=np.zeros((3, 3))),
            {"expected_ids": np.arange(3)},
            r"payload has 1 ids not in expected_ids: \[7\]",
        ),
        (_patch(_blob(), HEADER_SIZE + 3, "<B", 1), {}, "checksum mismatch"),  # one byte of an id changed
        (_patch(_blob(), 16, "<I", 0), {}, "checksum mismatch"),
        (_v1([0, 1], np.zeros((2, 3))), {}, "format version 1 .* no longer accepted"),
        ("not bytes", {}, "must be bytes"),
    ],
)
def test_decode_rejects(blob, kwargs, match):
    with pytest.raises(WireFormatError, match=match):
        decode_logits(blob, **kwargs)


@pytest.mark.parametrize("bad_scale", [np.nan, np.inf, 0.0, -1.0])
def test_decode_rejects_bad_int8_scales(bad_scale):
    blob = bytearray(_blob("int8"))
    struct.pack_into("<f", blob, HEADER_SIZE + 8 * 4 + 4 * 1, bad_scale)  # scale of row 1
    with pytest.raises(WireFormatError, match="int8 scales"):
        decode_logits(_sealed(blob))


def test_decode_rejects_float16_inf_bits():
    blob = bytearray(_blob("float16"))
    struct.pack_into("<H", blob, HEADER_SIZE + 8 * 4, 0x7C00)  # float16 +inf in the first element
    with pytest.raises(WireFormatError, match="non-finite"):
        decode_logits(_sealed(blob))


def test_bad_expected_ids_is_a_caller_error():
    with pytest.raises(ValueError, match="expected_ids has duplicates"):
        decode_logits(_blob(), expected_ids=np.array([0, 1, 2, 3, 3]))
    with pytest.raises(ValueError, match="expected_ids must be a 1-D integer array"):
        decode_logits(_blob(), expected_ids=np.zeros((2, 2), dtype=int))


def test_payload_nbytes_unknown_dtype():
    with pytest.raises(WireFormatError, match="dtype"):
        payload_nbytes(1, 1, dtype="float64")


def test_version_1_payloads_are_read_only_when_asked():
    """What a ledger stored before version 2 stays readable (``legacy=True``); from a peer it is refused."""
    old = _v1([3, 1], np.arange(6, dtype=np.float32).reshape(2, 3))
    out = decode_logits(old, legacy=True, expected_ids=np.array([1, 3]), num_classes=3)
    np.testing.assert_array_equal(out.logits, [[3, 4, 5], [0, 1, 2]])


def test_every_single_bit_flip_is_refused():
    """Each of the blob's bits flipped in turn (C = 4: a float16 body is as long as an int8 one, so a flipped
    dtype code alone keeps the length right): every one is refused, none decodes as garbage."""
    blob = _blob("float16", ids=np.arange(6), logits=np.ones((6, 4)))
    for bit in range(8 * len(blob)):
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(WireFormatError):
            decode_logits(bytes(flipped))


def test_a_header_that_disagrees_with_the_request_costs_no_memory():
    """A 64 MiB int8 blob whose row count is not the asked one is refused before any array is made."""
    n, c = 1 << 20, 56
    blob = bytearray(payload_nbytes(n, c, dtype="int8"))
    struct.pack_into("<4sBBHIII", blob, 0, b"NBLG", 2, 3, 0, n, c, 0)
    tracemalloc.start()
    try:
        with pytest.raises(WireFormatError, match="1048576 rows, 300 public inputs were asked for"):
            decode_logits(blob, expected_ids=np.arange(300), num_classes=c)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # under 1 MiB, against the 64 MiB payload


def test_with_checksum_makes_a_deliberately_changed_payload_well_formed():
    from nebula.common.wire import with_checksum

    raw = bytearray(_blob("float32"))
    raw[-4:] = np.array([np.nan], dtype="<f4").tobytes()
    with pytest.raises(WireFormatError, match="checksum"):
        decode_logits(bytes(raw))
    with pytest.raises(WireFormatError, match="non-finite"):
        decode_logits(with_checksum(bytes(raw)))
