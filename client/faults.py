"""Fault injection: make chosen clients send malformed replies (tests and robustness demos).

``federation.faults = "2:nan,3:bad-ids"`` corrupts the logits payload of clients 2 and 3.
The corruption happens after the client computed its honest answer, on the way out, so
the rest of the client's behaviour is unchanged. Used to show the server leaves such
replies out, logs why, and completes the round.
"""

from __future__ import annotations

import numpy as np

from nebula.common.wire import DecodedLogits, decode_logits, encode_logits, with_checksum

FAULT_KINDS = ("nan", "bad-ids", "truncated", "wrong-shape", "error")


def parse_faults(spec: str) -> dict[int, str]:
    faults: dict[int, str] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        index, sep, kind = entry.partition(":")
        if not sep or not index.strip().isdigit() or kind.strip() not in FAULT_KINDS:
            raise ValueError(f"federation.faults entry {entry!r} is not 'client-index:{'|'.join(FAULT_KINDS)}'")
        faults[int(index)] = kind.strip()
    return faults


def corrupt(blob: bytes, kind: str) -> bytes:
    """Return a malformed version of a valid logits payload."""
    good: DecodedLogits = decode_logits(blob)
    if kind == "nan":
        # Written with float32 so the NaN survives; encode_logits refuses NaN, so patch the bytes.
        raw = bytearray(encode_logits(good.ids, good.logits, dtype="float32"))
        raw[-4:] = np.array([np.nan], dtype="<f4").tobytes()
        return with_checksum(bytes(raw))  # well-formed but for the NaN: the server must refuse it for the NaN
    if kind == "bad-ids":
        return encode_logits(good.ids + 10**9, good.logits, dtype="float32")
    if kind == "truncated":
        return blob[: len(blob) // 2]
    if kind == "wrong-shape":
        return encode_logits(good.ids, np.concatenate([good.logits, good.logits[:, :1]], axis=1), dtype="float32")
    raise ValueError(f"fault {kind!r} does not corrupt payloads")
