"""Wire format of soft logits: one self-describing, validated bytes blob.

Every payload of logits that crosses the network (client -> server, server -> teacher,
teacher -> server -> clients) and every payload the ledger stores uses this format.

Layout (all little-endian, no padding between sections)::

    offset  size      field
    0       4         magic b"NBLG"
    4       1         format version (uint8), currently 2
    5       1         dtype code (uint8): 1 float16, 2 float32, 3 int8
    6       2         reserved (uint16), must be 0
    8       4         N: number of rows / public inputs (uint32)
    12      4         C: number of classes (uint32)
    16      4         CRC-32 (zlib) of bytes 0-15 and of every byte after the header
    20      8 N       ids (int64), one public-input id per row, unique, >= 0
    ...     4 N       int8 only: one float32 scale per row
    ...     b N C     the logits, row-major, b = 2 / 4 / 1 bytes per element

The length of a blob is fully determined by its header (:func:`payload_nbytes`), so a
truncated or over-long blob is always detected; the CRC catches bytes changed in transit or
on disk (a flipped bit in a logit, an id or a scale).

**Checked before anything is allocated.** The header alone is checked against what the
receiver expects (its number of classes and, with ``expected_ids``, its number of rows) and
against the blob's length, so a hostile header costs the receiver nothing; the body is read
from the caller's buffer without copying it, and int8 decodes straight into float32.

**Versions.** Version 1 (no CRC, a 16-byte header) is refused with a message that names it;
payloads a ledger stored before version 2 are read with ``legacy=True`` (local, trusted data).

Design choices
--------------
* **float16 overflow saturates.** float16 cannot hold ``|x| > 65504``; rather than letting
  such a value become ``inf`` (which the receiver would reject, losing the whole reply),
  :func:`encode_logits` clips it to ``+-65504``. A logit that large already puts all the
  mass of ``softmax(z / T)`` on its class for any practical ``T``; callers that need exact
  values use ``dtype="float32"``. The float16 rounding error is at most
  ``|x| * 2**-11`` (plus ``2**-25`` for subnormals).
* **int8 is symmetric per-row quantisation**: ``scale_n = max_c |z_nc| / 127`` and
  ``q_nc = round(z_nc / scale_n)``, decoded as ``q_nc * scale_n``; the error is at most
  ``scale_n / 2`` per element. An all-zero row gets ``scale = 1`` (no division by zero).
* **Input is float32.** Logits are converted to float32 before encoding; values outside
  the float32 range are refused like NaN and Inf.
* ``expected_ids`` is the receiver's own list, so a malformed ``expected_ids`` is a caller
  bug and raises a plain :class:`ValueError`; everything wrong with the blob raises
  :class:`WireFormatError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"NBLG"
FORMAT_VERSION = 2
LEGACY_VERSION = 1  # no CRC: read from a ledger only (``legacy=True``)
WIRE_DTYPES = ("float16", "float32", "int8")
MAX_ROWS = 1 << 24  # 16.7M public inputs in one payload
MAX_CLASSES = 1 << 20  # covers the vocabularies of causal LMs (top-k logits stay far below)
MAX_ELEMENTS = 1 << 30  # N * C; keeps a hostile header from asking for terabytes

_HEADER = struct.Struct("<4sBBHIII")
HEADER_SIZE = _HEADER.size  # 20
_LEGACY_HEADER = struct.Struct("<4sBBHII")  # version 1: 16 bytes, no CRC
_CRC_OFFSET = 16  # the CRC covers the header fields before it and everything after the header
_CODES = {"float16": 1, "float32": 2, "int8": 3}
_NAMES = {code: name for name, code in _CODES.items()}
_NUMPY = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4"), "int8": np.dtype("i1")}
_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
_SCALE_BYTES = 4  # one float32 per row for int8


class WireFormatError(ValueError):
    """A logits payload is malformed or does not match what the receiver expects."""


@dataclass(frozen=True)
class DecodedLogits:
    """A decoded payload.

    Attributes
    ----------
    ids : np.ndarray
        int64 ``(N,)`` public-input ids, one per row.
    logits : np.ndarray
        float32 ``(N, C)`` logits; row ``n`` belongs to ``ids[n]``.
    """

    ids: np.ndarray
    logits: np.ndarray


def payload_nbytes(n: int, c: int, *, dtype: str) -> int:
    """Exact size in bytes of a blob holding ``n`` rows of ``c`` classes in ``dtype``.

    ``20 + 8 n (+ 4 n for int8) + bytes_per_element * n * c``.
    """
    if dtype not in _CODES:
        raise WireFormatError(f"dtype must be one of {WIRE_DTYPES}, got {dtype!r}")
    if n < 0 or c < 0:
        raise ValueError(f"n and c must be >= 0, got n={n}, c={c}")
    scales = _SCALE_BYTES * n if dtype == "int8" else 0
    return HEADER_SIZE + 8 * n + scales + _NUMPY[dtype].itemsize * n * c


def encode_logits(ids: np.ndarray, logits: np.ndarray, *, dtype: str = "float16") -> bytes:
    """Encode ``(N,)`` ids and ``(N, C)`` logits into one wire blob.

    Parameters
    ----------
    ids : array of int, shape (N,)
        Unique, non-negative public-input ids, one per row of ``logits``.
    logits : array of float, shape (N, C)
        Finite logits (float32 range). N >= 1, C >= 1.
    dtype : {"float16", "float32", "int8"}
        Element type on the wire. float16 saturates at +-65504 (see module docs).

    Raises
    ------
    WireFormatError
        Unknown dtype, wrong shapes, length mismatch, duplicate or negative ids,
        non-finite logits.
    """
    if dtype not in _CODES:
        raise WireFormatError(f"dtype must be one of {WIRE_DTYPES}, got {dtype!r}")
    ids_arr = np.asarray(ids)
    if ids_arr.ndim != 1 or not np.issubdtype(ids_arr.dtype, np.integer):
        raise WireFormatError(f"ids must be a 1-D integer array, got shape {ids_arr.shape} dtype {ids_arr.dtype}")
    z = np.asarray(logits)
    if z.ndim != 2:
        raise WireFormatError(f"logits must be 2-D (N, C), got shape {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise WireFormatError(f"logits must be real numbers, got dtype {z.dtype}")
    n, c = z.shape
    if len(ids_arr) != n:
        raise WireFormatError(f"ids has {len(ids_arr)} entries but logits has {n} rows")
    _check_sizes(n, c)
    ids64 = ids_arr.astype(np.int64)
    _check_ids(ids64, where="ids")
    with np.errstate(over="ignore", invalid="ignore"):
        z32 = z.astype(np.float32)
    if not np.isfinite(z32).all():
        raise WireFormatError(
            f"logits has {int((~np.isfinite(z32)).sum())} non-finite values (NaN, Inf or beyond float32)"
        )

    if dtype == "float16":
        body = np.clip(z32, -_FLOAT16_MAX, _FLOAT16_MAX).astype(_NUMPY["float16"]).tobytes()
    elif dtype == "float32":
        body = z32.astype(_NUMPY["float32"]).tobytes()
    else:
        scales = (np.abs(z32).max(axis=1) / np.float32(127)).astype(np.float32)  # (N,)
        scales[scales == 0] = 1.0  # zero row, or so tiny the scale underflows
        q = np.clip(np.rint(z32 / scales[:, None]), -127, 127).astype(np.int8)  # (N, C)
        body = scales.astype("<f4").tobytes() + q.tobytes()
    ids_bytes = ids64.astype("<i8").tobytes()
    fields = _HEADER.pack(MAGIC, FORMAT_VERSION, _CODES[dtype], 0, n, c, 0)[:_CRC_OFFSET]
    crc = zlib.crc32(body, zlib.crc32(ids_bytes, zlib.crc32(fields)))
    return fields + struct.pack("<I", crc) + ids_bytes + body


def with_checksum(blob: bytes) -> bytes:
    """``blob`` (version 2) with its CRC recomputed: for fault injection, which changes a payload's bytes on purpose
    to send what a buggy but well-formed client would (NaN logits, say) rather than a corrupted one."""
    fields = bytes(blob[:_CRC_OFFSET])
    return (
        fields
        + struct.pack("<I", zlib.crc32(bytes(blob[HEADER_SIZE:]), zlib.crc32(fields)))
        + bytes(blob[HEADER_SIZE:])
    )


def decode_logits(
    blob: bytes, *, expected_ids: np.ndarray | None = None, num_classes: int | None = None, legacy: bool = False
) -> DecodedLogits:
    """Decode and validate a wire blob.

    Parameters
    ----------
    blob : bytes
        A payload made by :func:`encode_logits`.
    expected_ids : array of int, shape (M,), optional
        The ids the receiver asked for. The blob must hold exactly these ids (any order);
        the returned rows follow the order of ``expected_ids``.
    num_classes : int, optional
        The number of classes the receiver expects (C).
    legacy : bool
        Also read version-1 payloads (no CRC): for what a ledger stored before version 2.

    Returns
    -------
    DecodedLogits
        ``ids`` int64 (N,) and ``logits`` float32 (N, C), fresh writable arrays.

    Raises
    ------
    WireFormatError
        Wrong magic, version or dtype code; nonzero reserved bytes; N or C zero or absurd;
        N or C other than the receiver expects; truncated or over-long blob; CRC mismatch;
        NaN/Inf values or int8 scales; duplicate or negative ids; ids unknown to or missing
        from ``expected_ids``.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"payload must be bytes, got {type(blob).__name__}")
    view = memoryview(blob).cast("B")  # no copy of the caller's buffer
    expected = None if expected_ids is None else _expected(expected_ids)
    n, c, dtype, offset = _read_header(
        view, num_classes=num_classes, expected_rows=None if expected is None else len(expected), legacy=legacy
    )
    ids, logits = _read_body(view, n, c, dtype, offset)
    if expected is not None:
        order = _match_expected(ids, expected)
        ids, logits = ids[order], logits[order]
    return DecodedLogits(ids=np.ascontiguousarray(ids), logits=np.ascontiguousarray(logits))


def _read_header(
    view: memoryview, *, num_classes: int | None, expected_rows: int | None, legacy: bool
) -> tuple[int, int, str, int]:
    """Validate the header, and the blob's length and CRC against it; ``(N, C, dtype name, body offset)``."""
    if len(view) < 5:
        raise WireFormatError(f"payload truncated: {len(view)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version = bytes(view[:4]), view[4]
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {magic!r}, expected {MAGIC!r}: not a Nebula logits payload")
    if version == LEGACY_VERSION and not legacy:
        raise WireFormatError(
            f"payload is in format version {LEGACY_VERSION} (no checksum), no longer accepted: this node reads "
            f"version {FORMAT_VERSION}; update the sender to the same nebula-fd version"
        )
    if version not in (FORMAT_VERSION, LEGACY_VERSION):
        raise WireFormatError(f"unsupported format version {version}, this reader supports {FORMAT_VERSION}")
    layout = _HEADER if version == FORMAT_VERSION else _LEGACY_HEADER
    if len(view) < layout.size:
        raise WireFormatError(f"payload truncated: {len(view)} bytes, shorter than the {layout.size}-byte header")
    _, _, code, reserved, n, c, *crc = layout.unpack_from(view, 0)
    if code not in _NAMES:
        raise WireFormatError(f"unknown dtype code {code}, known codes {dict(sorted(_NAMES.items()))}")
    if reserved != 0:
        raise WireFormatError(f"reserved header field is {reserved}, must be 0")
    _check_sizes(n, c)
    if num_classes is not None and c != num_classes:
        raise WireFormatError(f"num_classes mismatch: expected {num_classes}, got {c}")
    if expected_rows is not None and n != expected_rows:
        raise WireFormatError(f"payload has {n} rows, {expected_rows} public inputs were asked for")
    dtype = _NAMES[code]
    expected_len = payload_nbytes(n, c, dtype=dtype) - HEADER_SIZE + layout.size
    if len(view) != expected_len:
        what = "truncated" if len(view) < expected_len else "over-long"
        raise WireFormatError(
            f"payload {what}: {len(view)} bytes, header (N={n}, C={c}, {dtype}) implies {expected_len}"
        )
    if crc and zlib.crc32(view[layout.size :], zlib.crc32(view[:_CRC_OFFSET])) != crc[0]:
        raise WireFormatError("payload checksum mismatch: its bytes changed after it was encoded")
    return n, c, dtype, layout.size


def _read_body(view: memoryview, n: int, c: int, dtype: str, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """The validated ids (N,) int64 and logits (N, C) float32 after the header, in wire order."""
    ids = np.frombuffer(view, dtype="<i8", count=n, offset=offset).astype(np.int64)
    offset += 8 * n
    _check_ids(ids, where="payload ids")
    if dtype == "int8":
        scales = np.frombuffer(view, dtype="<f4", count=n, offset=offset).astype(np.float32)
        offset += _SCALE_BYTES * n
        if not np.isfinite(scales).all() or (scales <= 0).any():
            raise WireFormatError(
                "int8 scales must be finite and > 0, "
                f"got {int((~(np.isfinite(scales) & (scales > 0))).sum())} bad scales"
            )
        q = np.frombuffer(view, dtype=np.int8, count=n * c, offset=offset).reshape(n, c)
        with np.errstate(over="ignore", invalid="ignore"):
            logits = np.multiply(q, scales[:, None], dtype=np.float32)  # (N, C): one float32 array, no temporaries
    else:
        logits = np.frombuffer(view, dtype=_NUMPY[dtype], count=n * c, offset=offset).reshape(n, c).astype(np.float32)
    if not np.isfinite(logits).all():
        raise WireFormatError(f"payload holds {int((~np.isfinite(logits)).sum())} non-finite logits (NaN or Inf)")
    return ids, logits


def _check_sizes(n: int, c: int) -> None:
    if not 1 <= n <= MAX_ROWS:
        raise WireFormatError(f"N (rows) must be in [1, {MAX_ROWS}], got {n}")
    if not 1 <= c <= MAX_CLASSES:
        raise WireFormatError(f"C (classes) must be in [1, {MAX_CLASSES}], got {c}")
    if n * c > MAX_ELEMENTS:
        raise WireFormatError(f"N * C = {n * c} exceeds the limit of {MAX_ELEMENTS} elements")


def _check_ids(ids: np.ndarray, *, where: str) -> None:
    if (ids < 0).any():
        raise WireFormatError(f"{where} must be >= 0, got {_few(ids[ids < 0])}")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        raise WireFormatError(f"{where} has duplicates: {_few(uniq[counts > 1])}")


def _expected(expected_ids: np.ndarray) -> np.ndarray:
    """The receiver's own ids, checked (a malformed list is a caller bug: ValueError)."""
    exp = np.asarray(expected_ids)
    if exp.ndim != 1 or not np.issubdtype(exp.dtype, np.integer):
        raise ValueError(f"expected_ids must be a 1-D integer array, got shape {exp.shape} dtype {exp.dtype}")
    exp = exp.astype(np.int64)
    if len(np.unique(exp)) != len(exp):
        raise ValueError("expected_ids has duplicates")
    return exp


def _match_expected(ids: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """Positions in ``ids`` of each expected id, in ``exp`` order."""
    unknown = np.setdiff1d(ids, exp)
    if len(unknown):
        raise WireFormatError(f"payload has {len(unknown)} ids not in expected_ids: {_few(unknown)}")
    missing = np.setdiff1d(exp, ids)
    if len(missing):
        raise WireFormatError(f"payload is missing {len(missing)} expected ids: {_few(missing)}")
    sorter = np.argsort(ids)
    return sorter[np.searchsorted(ids, exp, sorter=sorter)]


def _few(values: np.ndarray, k: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:k])
    return f"[{shown}{', ...' if len(values) > k else ''}]"
