"""Read and write CTranslate2's `model.bin` (the format of the bundled Whisper weights).

Layout, little-endian: ``u32 version | str spec name | u32 revision | u32 count``,
then per variable ``str name | u8 rank | u32 dims[rank] | u8 dtype | u32 nbytes | data``,
then ``u32 alias count`` and per alias ``str alias | str target``. A string is a
u16 length that counts a trailing NUL, the UTF-8 bytes, then the NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: np.uint16,  # bfloat16, kept as raw 16-bit words
}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items() if k != 5}


@dataclass
class CT2Model:
    """A parsed ``model.bin``: spec name, revision, variables and aliases."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    version: int = 6

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following aliases."""
        return self.variables[self.aliases.get(name, name)]


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("model.bin ends early: the file is truncated or not a CTranslate2 model")
    return struct.unpack("<" + fmt, data)


def _read_str(f: BinaryIO) -> str:
    (n,) = _read(f, "H")
    raw = f.read(n)
    if len(raw) != n or not raw.endswith(b"\0"):
        raise ValueError("model.bin holds a malformed string")
    return raw[:-1].decode("utf-8")


def read_model_bin(source: str | Path | BinaryIO) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (a path or an open binary file)."""
    if not hasattr(source, "read"):
        with open(source, "rb") as f:
            return read_model_bin(f)
    f = source
    (version,) = _read(f, "I")
    if version < 5:
        raise ValueError(f"unsupported CTranslate2 model.bin version {version}")
    spec = _read_str(f)
    (revision,) = _read(f, "I")
    (count,) = _read(f, "I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = _read_str(f)
        (rank,) = _read(f, "B")
        dims = _read(f, f"{rank}I") if rank else ()
        (code,) = _read(f, "B")
        (nbytes,) = _read(f, "I")
        if code not in _DTYPES:
            raise ValueError(f"variable {name!r} has unknown dtype code {code}")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise ValueError(f"model.bin ends inside variable {name!r}")
        variables[name] = np.frombuffer(data, dtype=_DTYPES[code]).reshape(dims).copy()
    (n_alias,) = _read(f, "I")
    aliases = {}
    for _ in range(n_alias):
        alias = _read_str(f)
        aliases[alias] = _read_str(f)
    return CT2Model(spec, revision, variables, aliases, version)


def _write_str(f: BinaryIO, text: str) -> None:
    raw = text.encode("utf-8") + b"\0"
    f.write(struct.pack("<H", len(raw)) + raw)


def write_model_bin(model: CT2Model, path: str | Path) -> None:
    """Write ``model`` in the same layout (used to test the reader)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<I", model.version))
        _write_str(f, model.spec)
        f.write(struct.pack("<II", model.revision, len(model.variables)))
        for name, array in model.variables.items():
            _write_str(f, name)
            f.write(struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape))
            data = np.ascontiguousarray(array).tobytes()
            f.write(struct.pack("<BI", _CODES[array.dtype], len(data)) + data)
        f.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            _write_str(f, alias)
            _write_str(f, target)
