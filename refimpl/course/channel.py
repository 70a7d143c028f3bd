"""The wire between the grader and the sandbox: data only, in bounded frames.

Both sides import this module: the grader as :mod:`refimpl.course.channel`, the sandbox as a
copy (``_grader.channel``) next to its worker, so it needs nothing but the standard library
and NumPy (torch only when a message holds tensors, generators or torch dtypes).

A message is a frame ``b"RGC1" | json length (u32) | blob length (u64) | json | blobs``. The
JSON is a tree of plain values; what JSON cannot say is an object with one special key:

=====================  ==============================================================
``{"__nd__": ...}``    a NumPy array: dtype (from :data:`DTYPES`), shape, offset and
                       length of its bytes among the blobs (``scalar``: a NumPy scalar)
``{"__tensor__": ..}`` a torch tensor: the same, plus the torch dtype and requires_grad
``{"__tuple__": [..]}``, ``{"__dict__": [[k, v], ..]}``, ``{"__float__": "nan"}``,
``{"__int__": "..."}`` (beyond 64 bits), ``{"__generator__": state}``,
``{"__torch_dtype__": "float32"}``, ``{"__np_dtype__": "float64"}``,
``{"__callback__": id}`` (a function of the grader's the sandbox may call back)
=====================  ==============================================================

Nothing is ever unpickled, arrays are rebuilt with ``np.frombuffer`` from an allow-listed
dtype and a checked shape (stricter than ``np.load(allow_pickle=False)``: no header to
parse), and every size is checked before anything is allocated. A value of any other type
(a module, an ``nn.Module``, a function where no callback is allowed, ...) raises
:class:`NotData`; a frame that breaks a rule raises :class:`ChannelError`.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from typing import Any

import numpy as np

MAGIC = b"RGC1"
HEADER = struct.Struct("!4sIQ")
MAX_JSON = 8 << 20  # bytes of JSON in one frame
MAX_BLOBS = 512 << 20  # bytes of array data in one frame
MAX_DEPTH = 24
MAX_DIMS = 16
DTYPES = frozenset(
    "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 "
    "complex64 complex128".split()
)
# torch dtypes NumPy has no type for travel as float32 and are cast back on arrival
TORCH_VIA_FLOAT32 = frozenset({"bfloat16"})


class ChannelError(Exception):
    """A frame or value that breaks the channel's rules (too big, malformed, unknown form)."""


class NotData(TypeError):
    """A value the channel cannot carry (only data crosses the sandbox's boundary)."""


def _torch():
    """torch if this process has imported it (never imported just to look at a value)."""
    return sys.modules.get("torch")


def _native(arr: np.ndarray) -> np.ndarray:
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # 0-d stays 0-d


class Encoder:
    """Turns a value into (JSON tree, blobs); ``callbacks`` (a dict) allows functions."""

    def __init__(self, callbacks: dict[int, Any] | None = None):
        self.blobs: list[bytes] = []
        self.size = 0
        self.callbacks = callbacks

    def _blob(self, arr: np.ndarray) -> dict[str, Any]:
        arr = _native(arr)
        name = arr.dtype.name
        if name not in DTYPES:
            raise NotData(f"an array of dtype {arr.dtype} (only numbers and booleans)")
        if arr.ndim > MAX_DIMS:
            raise NotData(f"an array with {arr.ndim} dimensions")
        data = arr.tobytes()
        if self.size + len(data) > MAX_BLOBS:
            raise NotData(f"more than {MAX_BLOBS >> 20} MB of arrays in one message")
        out = {"dtype": name, "shape": list(arr.shape), "offset": self.size, "nbytes": len(data)}
        self.blobs.append(data)
        self.size += len(data)
        return out

    def encode(self, v: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise NotData(f"a value nested more than {MAX_DEPTH} levels deep")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v if -(2**63) <= v < 2**63 else {"__int__": str(int(v))}
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(v, (tuple, list, dict)):
            return self._container(v, depth)
        out = self._numpy(v)
        if out is None:
            out = self._torch_value(v)
        if out is not None:
            return out
        if callable(v) and self.callbacks is not None:
            key = len(self.callbacks)
            self.callbacks[key] = v
            return {"__callback__": key}
        raise NotData(f"a {type(v).__module__}.{type(v).__qualname__}")

    def _container(self, v: tuple | list | dict, depth: int) -> Any:
        if isinstance(v, tuple):
            return {"__tuple__": [self.encode(x, depth + 1) for x in v]}
        if isinstance(v, list):
            return [self.encode(x, depth + 1) for x in v]
        items = []
        for k, x in v.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise NotData(f"a dict with a key of type {type(k).__name__}")
            items.append([k, self.encode(x, depth + 1)])
        return {"__dict__": items}

    def _numpy(self, v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return {"__nd__": self._blob(v)}
        if isinstance(v, np.generic):
            return {"__nd__": {**self._blob(np.asarray(v)), "scalar": True}}
        if isinstance(v, np.dtype):
            return {"__np_dtype__": self._dtype_name(v.name)}
        return None

    def _torch_value(self, v: Any) -> Any:
        torch = _torch()
        if torch is None:
            return None
        if isinstance(v, torch.Tensor):
            return self._tensor(torch, v)
        if isinstance(v, torch.dtype):
            return {"__torch_dtype__": str(v).removeprefix("torch.")}
        if isinstance(v, torch.Generator):
            return {"__generator__": self._blob(v.get_state().numpy())}
        return None

    @staticmethod
    def _dtype_name(name: str) -> str:
        if name not in DTYPES:
            raise NotData(f"the dtype {name}")
        return name

    def _tensor(self, torch, t) -> dict[str, Any]:
        if t.layout != torch.strided or t.is_quantized:
            raise NotData(f"a {t.layout} tensor (only dense tensors)")
        name = str(t.dtype).removeprefix("torch.")
        data = t.detach().cpu().resolve_conj().resolve_neg()
        if name in TORCH_VIA_FLOAT32:
            data = data.float()
        elif name not in DTYPES:
            raise NotData(f"a tensor of dtype {t.dtype}")
        blob = self._blob(data.numpy())
        return {"__tensor__": {**blob, "torch_dtype": name, "requires_grad": t.requires_grad}}


def encode(value: Any, callbacks: dict[int, Any] | None = None) -> tuple[Any, list[bytes]]:
    enc = Encoder(callbacks)
    return enc.encode(value), enc.blobs


class Decoder:
    """Rebuilds a value from (JSON tree, blob bytes); ``callback(id)`` makes a callback."""

    def __init__(self, blob: bytes | memoryview, callback=None):
        self.blob = memoryview(blob)
        self.callback = callback

    def _array(self, spec: Any) -> np.ndarray:
        if not isinstance(spec, dict):
            raise ChannelError("malformed array")
        dtype, shape = spec.get("dtype"), spec.get("shape")
        offset, nbytes = spec.get("offset"), spec.get("nbytes")
        if dtype not in DTYPES:
            raise ChannelError(f"an array of dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise ChannelError(f"an array of shape {shape!r}")
        if not all(isinstance(n, int) and n >= 0 for n in (offset, nbytes)):
            raise ChannelError("malformed array offsets")
        itemsize = np.dtype(dtype).itemsize
        count = math.prod(shape)
        if count * itemsize != nbytes or offset + nbytes > len(self.blob):
            raise ChannelError(f"array data of {nbytes} bytes for {count} {dtype} values")
        arr = np.frombuffer(self.blob[offset : offset + nbytes], dtype=dtype).reshape(shape)
        return arr.copy()  # writable, and no view of the frame

    def decode(self, v: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH + 2:
            raise ChannelError("nested too deeply")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.decode(x, depth + 1) for x in v]
        if not isinstance(v, dict) or len(v) != 1:
            raise ChannelError(f"an unknown form {str(v)[:80]!r}")
        ((key, body),) = v.items()
        form = self.FORMS.get(key)
        if form is None:
            raise ChannelError(f"an unknown form {key!r}")
        return form(self, body, depth)

    def _tuple(self, body: Any, depth: int) -> tuple:
        if not isinstance(body, list):
            raise ChannelError("malformed tuple")
        return tuple(self.decode(x, depth + 1) for x in body)

    def _dict(self, body: Any, depth: int) -> dict:
        if not isinstance(body, list):
            raise ChannelError("malformed dict")
        out = {}
        for item in body:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                raise ChannelError("malformed dict")
            out[item[0]] = self.decode(item[1], depth + 1)
        return out

    def _nd(self, body: Any, _depth: int) -> Any:
        arr = self._array(body)
        return arr[()] if body.get("scalar") else arr

    def _float(self, body: Any, _depth: int) -> float:
        if body not in ("nan", "inf", "-inf"):
            raise ChannelError("malformed float")
        return float(body)

    def _int(self, body: Any, _depth: int) -> int:
        try:
            if not isinstance(body, str) or len(body) > 4000:
                raise ValueError
            return int(body)
        except ValueError:
            raise ChannelError("malformed int") from None

    def _np_dtype(self, body: Any, _depth: int) -> np.dtype:
        if body not in DTYPES:
            raise ChannelError(f"a dtype {body!r}")
        return np.dtype(body)

    def _generator(self, body: Any, _depth: int):
        import torch

        g = torch.Generator()
        try:
            g.set_state(torch.from_numpy(self._array(body)))
        except (RuntimeError, TypeError) as e:
            raise ChannelError(f"a generator state that torch refuses ({e})") from None
        return g

    def _callback(self, body: Any, _depth: int):
        if not isinstance(body, int) or self.callback is None:
            raise ChannelError("a callback where none is allowed")
        return self.callback(body)

    def _torch_dtype(self, name: Any, _depth: int = 0):
        import torch

        if name not in DTYPES | TORCH_VIA_FLOAT32:
            raise ChannelError(f"a torch dtype {name!r}")
        return getattr(torch, name)

    def _tensor(self, body: Any, _depth: int = 0):
        import torch

        if not isinstance(body, dict):
            raise ChannelError("malformed tensor")
        t = torch.from_numpy(self._array(body))
        dtype = self._torch_dtype(body.get("torch_dtype"))
        if t.dtype != dtype:
            t = t.to(dtype)
        if body.get("requires_grad") is True and (t.is_floating_point() or t.is_complex()):
            t.requires_grad_()
        return t


Decoder.FORMS = {
    "__tuple__": Decoder._tuple,
    "__dict__": Decoder._dict,
    "__nd__": Decoder._nd,
    "__float__": Decoder._float,
    "__int__": Decoder._int,
    "__np_dtype__": Decoder._np_dtype,
    "__torch_dtype__": Decoder._torch_dtype,
    "__tensor__": Decoder._tensor,
    "__generator__": Decoder._generator,
    "__callback__": Decoder._callback,
}


def decode(tree: Any, blob: bytes | memoryview, callback=None) -> Any:
    return Decoder(blob, callback).decode(tree)


# --- frames -------------------------------------------------------------------------------


def pack(message: dict[str, Any], blobs: list[bytes] = ()) -> bytes:
    """One frame: the message (JSON) and the blobs its arrays point into."""
    text = json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    size = sum(len(b) for b in blobs)
    if len(text) > MAX_JSON or size > MAX_BLOBS:
        raise NotData(f"a message of {len(text) + size} bytes")
    return b"".join([HEADER.pack(MAGIC, len(text), size), text, *blobs])


def message(op: str, value: Any = None, callbacks: dict[int, Any] | None = None, **fields) -> bytes:
    """A frame ``{"op": op, **fields, "value": <value encoded>}``."""
    tree, blobs = encode(value, callbacks)
    return pack({"op": op, **fields, "value": tree}, blobs)


class FrameReader:
    """Bytes in, complete ``(message dict, blob bytes)`` frames out; limits checked first."""

    def __init__(self, max_json: int = MAX_JSON, max_blobs: int = MAX_BLOBS):
        self.buf = bytearray()
        self.max_json, self.max_blobs = max_json, max_blobs

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= HEADER.size:
            magic, n_json, n_blobs = HEADER.unpack_from(self.buf)
            if magic != MAGIC:
                raise ChannelError("not a frame (bad magic)")
            if n_json > self.max_json or n_blobs > self.max_blobs:
                raise ChannelError(f"a frame of {n_json} + {n_blobs} bytes is over the limit")
            end = HEADER.size + n_json + n_blobs
            if len(self.buf) < end:
                break
            text = bytes(self.buf[HEADER.size : HEADER.size + n_json])
            blob = bytes(self.buf[HEADER.size + n_json : end])
            del self.buf[:end]
            try:
                msg = json.loads(text)
            except (ValueError, UnicodeDecodeError):
                raise ChannelError("a frame whose JSON does not parse") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
                raise ChannelError("a frame without an op")
            out.append((msg, blob))
        return out

    def pending(self) -> int:
        """How many bytes a frame still needs (0: none started)."""
        if len(self.buf) < HEADER.size:
            return HEADER.size - len(self.buf) if self.buf else 0
        _, n_json, n_blobs = HEADER.unpack_from(self.buf)
        return HEADER.size + n_json + n_blobs - len(self.buf)
