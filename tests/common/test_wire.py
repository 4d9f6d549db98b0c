"""Tests of the logits wire format: round trips, reordering, and every rejection."""

from __future__ import annotations

import struct

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


def _raw(ids, values: np.ndarray, *, code: int = 2) -> bytes:
    """A blob built by hand, bypassing the encoder's checks (as a hostile sender would)."""
    n, c = values.shape
    header = struct.pack("<4sBBHII", b"NBLG", 1, code, 0, n, c)
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
        (_blob(), {"expected_ids": np.arange(6)}, r"missing 2 expected ids: \[4, 5\]"),
        (
            _blob(ids=np.array([0, 1]), logits=np.zeros((2, 3))),
            {"expected_ids": np.arange(3)},
            r"missing 1 expected ids: \[2\]",
        ),
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
        decode_logits(bytes(blob))


def test_decode_rejects_float16_inf_bits():
    blob = bytearray(_blob("float16"))
    struct.pack_into("<H", blob, HEADER_SIZE + 8 * 4, 0x7C00)  # float16 +inf in the first element
    with pytest.raises(WireFormatError, match="non-finite"):
        decode_logits(bytes(blob))


def test_bad_expected_ids_is_a_caller_error():
    with pytest.raises(ValueError, match="expected_ids has duplicates"):
        decode_logits(_blob(), expected_ids=np.array([0, 1, 2, 3, 3]))
    with pytest.raises(ValueError, match="expected_ids must be a 1-D integer array"):
        decode_logits(_blob(), expected_ids=np.zeros((2, 2), dtype=int))


def test_payload_nbytes_unknown_dtype():
    with pytest.raises(WireFormatError, match="dtype"):
        payload_nbytes(1, 1, dtype="float64")
