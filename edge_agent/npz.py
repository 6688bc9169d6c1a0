"""`.npy` / `.npz`, read and written without copies: the local server's wire format, and
the bundle's self-test vectors.

These are numpy's own file formats (`numpy.save`, `numpy.savez`), so any numpy
reads and writes them. numpy's functions cost about 0.1 ms per call on a small
array (a zip library, a Python-literal parser for each header), a fifth of the
server's latency budget, so the plain case is handled here: uncompressed
members, simple dtypes, headers as numpy writes them. Anything else (a
compressed `savez_compressed` file, structured dtypes) goes to numpy's own reader
(`allow_pickle=False` always), so the fast path decides speed, never what is
accepted. Arrays read from a `bytearray` are views onto it and writable.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import zipfile

__all__ = [
    "NPY_MAGIC",
    "ZIP_MAGICS",
    "Bytes",
    "UnpackedTooLargeError",
    "read_npy",
    "read_npz",
    "write_npz",
]

NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"  # an archive of no member is only its end record
ZIP_MAGICS = (_ZIP_MAGIC, _EMPTY_ZIP)  # how an .npz can begin

_HEADER = re.compile(
    r"\{'descr': '([^']+)', 'fortran_order': (False|True), 'shape': \(([\d, ]*)\), \} *\n"
)
_LOCAL = struct.Struct("<4s5H3L2H")  # a zip local file header
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # a zip central directory entry
_END = struct.Struct("<4s4H2LH")  # the zip end-of-central-directory record
_ZIP64_EXTRA = 0x0001
_FLAG_ENCRYPTED, _FLAG_DESCRIPTOR, _FLAG_UTF8 = 0x1, 0x8, 0x800
_DOS_DATE_1980 = (1 << 5) | 1  # 1980-01-01, the earliest a zip can say
_U32 = 0xFFFFFFFF
_STORED = 0  # zipfile.ZIP_STORED: the fast paths need no zipfile (0.8 MB an agent holds)
_dtypes: dict[str, np.dtype[Any]] = {}

Bytes = bytes | bytearray | memoryview


class UnpackedTooLargeError(ValueError):
    """A compressed `.npz` whose members would unpack to more than the limit."""


def read_npy(data: Bytes, start: int = 0, end: int | None = None) -> np.ndarray:
    """The array in ``data[start:end]``, an `.npy`. Raises ValueError when it is not one."""
    view = memoryview(data)[start:end]
    parsed = _parse_npy_header(view)
    if parsed is None:
        return np.lib.format.read_array(io.BytesIO(view), allow_pickle=False)
    dtype, fortran, shape, offset = parsed
    count = 1
    for n in shape:
        count *= n
    if len(view) - offset != count * dtype.itemsize:
        raise ValueError(
            f"the .npy array data is {len(view) - offset} bytes; "
            f"{dtype}{list(shape)} takes {count * dtype.itemsize}"
        )
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _parse_npy_header(
    view: memoryview,
) -> tuple[np.dtype[Any], bool, tuple[int, ...], int] | None:
    """(dtype, fortran order, shape, data offset) of a plain header; None for any other."""
    if view[:6] != NPY_MAGIC or len(view) < 10:
        raise ValueError("not an .npy array (no NUMPY header)")
    if view[6] != 1 or view[7] != 0:
        return None  # versions 2 and 3: rare, numpy reads them
    offset = 10 + int.from_bytes(view[8:10], "little")
    match = _HEADER.fullmatch(bytes(view[10:offset]).decode("latin-1"))
    if match is None:
        return None
    descr, fortran, dims = match.groups()
    dtype = _dtypes.get(descr)
    if dtype is None:
        try:
            dtype = np.dtype(descr)
        except TypeError:
            return None
        if dtype.hasobject or dtype.itemsize == 0:
            return None  # numpy refuses the pickle, or reads the odd zero-size dtype
        if len(_dtypes) < 64:
            _dtypes[descr] = dtype
    shape = tuple(int(d) for d in dims.split(",") if d.strip())
    return dtype, fortran == "True", shape, offset


def read_npz(data: Bytes, *, max_unpacked: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an `.npz`, keyed by name. Raises ValueError when it is not one.

    A compressed `.npz` whose members would unpack to more than `max_unpacked`
    bytes raises `UnpackedTooLargeError` before any is unpacked (an uncompressed
    one is never larger than `data`).
    """
    view = memoryview(data)
    if len(view) < _END.size or view[-_END.size : -_END.size + 4] != _EMPTY_ZIP:
        return _read_npz_with_numpy(view, max_unpacked)  # a comment, or truncated
    _, _, _, _, entries, table_size, table_at, _ = _END.unpack_from(view, len(view) - _END.size)
    if entries == 0xFFFF or table_at == _U32:
        return _read_npz_with_numpy(view, max_unpacked)  # zip64
    arrays: dict[str, np.ndarray] = {}
    position = 0
    while view[position : position + 4] == _ZIP_MAGIC:
        (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = _LOCAL.unpack_from(
            view, position
        )
        if method != _STORED or flags & (_FLAG_ENCRYPTED | _FLAG_DESCRIPTOR):
            return _read_npz_with_numpy(view, max_unpacked)
        name_at = position + _LOCAL.size
        extra_at = name_at + name_len
        if csize == _U32 or usize == _U32:  # stored: both sizes are the same
            csize = usize = _zip64_size(view[extra_at : extra_at + extra_len])
        start = extra_at + extra_len
        end = start + csize
        if csize != usize or end > len(view):
            raise ValueError("a member of the .npz is truncated")
        if zlib.crc32(view[start:end]) != crc:
            raise ValueError("a member of the .npz is corrupt (CRC mismatch)")
        name = bytes(view[name_at:extra_at]).decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
        key = name.removesuffix(".npy")
        if key == name:
            raise ValueError(f"the .npz member {name!r} is not an .npy array")
        if key in arrays:
            raise ValueError(f"the .npz holds two arrays named {key!r}")
        arrays[key] = read_npy(view, start, end)
        position = end
    listed = position == table_at and len(arrays) == entries
    if not listed or table_at + table_size + _END.size != len(view):
        raise ValueError("its zip directory does not match its members (truncated or edited)")
    return arrays


def _zip64_size(extra: memoryview) -> int:
    at = 0
    while at + 4 <= len(extra):
        kind, size = struct.unpack_from("<2H", extra, at)
        if kind == _ZIP64_EXTRA and size >= 8:
            return int.from_bytes(extra[at + 4 : at + 12], "little")
        at += 4 + size
    raise ValueError("an .npz member has no zip64 size")


def _read_npz_with_numpy(view: memoryview, max_unpacked: int | None) -> dict[str, np.ndarray]:
    import zipfile

    try:
        return _read_zip(zipfile.ZipFile(io.BytesIO(view)), max_unpacked)
    except zipfile.BadZipFile as exc:
        raise ValueError(str(exc)) from None


def _read_zip(archive: zipfile.ZipFile, max_unpacked: int | None) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    with archive:
        members = archive.infolist()
        unpacked = sum(m.file_size for m in members)  # zipfile reads no more than this
        if max_unpacked is not None and unpacked > max_unpacked:
            raise UnpackedTooLargeError(
                f"the .npz unpacks to {unpacked} bytes, over the limit of {max_unpacked}"
            )
        for member in members:
            key = member.filename.removesuffix(".npy")
            if key == member.filename:
                raise ValueError(f"the .npz member {member.filename!r} is not an .npy array")
            if key in arrays:
                raise ValueError(f"the .npz holds two arrays named {key!r}")
            with archive.open(member) as f:
                arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays


def write_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed `.npz` of `arrays` that `numpy.load` reads."""
    parts: list[bytes | memoryview] = []
    directory: list[bytes] = []
    offset = 0
    for key, value in arrays.items():
        array = np.asarray(value)
        header = _npy_header(array)
        if header is None:
            return _write_npz_with_numpy(arrays)
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        size = len(header) + data.nbytes
        if size >= _U32 or offset >= _U32:
            return _write_npz_with_numpy(arrays)  # zip64 territory
        crc = zlib.crc32(data, zlib.crc32(header))
        name = f"{key}.npy".encode()
        flags = 0 if name.isascii() else _FLAG_UTF8
        local = _LOCAL.pack(
            _ZIP_MAGIC, 20, flags, 0, 0, _DOS_DATE_1980, crc, size, size, len(name), 0
        )
        parts += [local, name, header, data]
        fields = (crc, size, size, len(name), 0, 0, 0, 0, 0o100644 << 16, offset)
        directory.append(
            _CENTRAL.pack(b"PK\x01\x02", 20, 20, flags, 0, 0, _DOS_DATE_1980, *fields) + name
        )
        offset += len(local) + len(name) + size
    table = b"".join(directory)
    end = _END.pack(b"PK\x05\x06", 0, 0, len(directory), len(directory), len(table), offset, 0)
    return b"".join([*parts, table, end])


def _npy_header(array: np.ndarray) -> bytes | None:
    """A version 1.0 `.npy` header for a C-order copy of `array`; None if numpy must write it."""
    descr = np.lib.format.dtype_to_descr(array.dtype)
    if not isinstance(descr, str) or array.dtype.hasobject:
        return None
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {array.shape!r}, }}"
    padding = -(10 + len(text) + 1) % 64  # numpy aligns the data to 64 bytes
    text += " " * padding + "\n"
    if len(text) > 0xFFFF:
        return None
    return NPY_MAGIC + b"\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1")


def _write_npz_with_numpy(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()
