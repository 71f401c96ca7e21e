"""Faces logs: each tile's side of every face that stitch compares, saved by segment.

Stitch compares a tile with its upper neighbour over the voxels :func:`face_views` names: the
two touching planes without a halo, a band around the face with one. Reading those from the
stage decodes both tiles' whole chunks to use a few planes of each (a 64x256x256 tile decodes 4M
voxels for 64K). So the segment worker, which holds the tile's labels anyway, also saves the
tile's side of each of its faces (up to two per spatial axis), compressed, appended to a faces
log of its own process (:class:`FacesLog`); the tile's record says where (:class:`FacesRef`),
and stitch reads those bytes instead of the stage.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import Zstd
from numpy.typing import NDArray

from blockbuster.io.boxes import Box, box_slices
from blockbuster.pipeline.plan import TilePlan
from blockbuster.run.files import AppendLog

_CODEC = Zstd(level=1)


def face_views(plan: TilePlan, lower: tuple[int, ...], axis: int) -> tuple[Box, Box]:
    """Boxes (image voxels) compared across the face between ``lower`` and its upper neighbour.

    Returns the box to read from the lower tile's stage chunk and the one to read from the upper
    tile's. Across the face they span the band of ``overlap // 4`` planes (at least one) on
    each side of it, which both tiles segmented three quarters of a halo or more away from the
    edge of what they read: a fn that sees less context near the edge of its block (a distance
    transform, a network's receptive field) decides the band as it does with the whole image.
    Along the other axes they span the tiles' cores and one voxel more where both tiles read
    it, so every pair of voxels touching across a face, diagonally too, is compared. Without a
    halo they are the two touching planes. (With an overlap under 4 the band is one plane on
    each side, so the context beyond it is the halo less one.)
    """
    core = plan.core(lower)
    face = core[axis][1]
    width = max(1, plan.overlap[axis] // 4)
    upper = list(lower)
    upper[axis] += 1
    shared = plan.read(lower), plan.read(tuple(upper))
    # the cores plus one voxel on the other axes (where both tiles read it): voxels that touch
    # only diagonally across a corner of four tiles are then compared too
    box_lo = [
        (max(a - 1, shared[0][i][0], shared[1][i][0]), min(b + 1, shared[0][i][1], shared[1][i][1]))
        for i, (a, b) in enumerate(core)
    ]
    box_hi = list(box_lo)
    if plan.overlap[axis] > 0:
        band = (face - width, min(face + width, plan.shape[axis]))
        box_lo[axis] = box_hi[axis] = band
    else:
        box_lo[axis] = (face - 1, face)
        box_hi[axis] = (face, face + 1)
    return tuple(box_lo), tuple(box_hi)


def tile_faces(
    plan: TilePlan, index: tuple[int, ...], chunk: NDArray[Any]
) -> dict[str, NDArray[Any]]:
    """The tile's side of each of its faces, cut from its stage ``chunk``.

    Keys are ``"up<axis>"`` (the face with the upper neighbour along ``axis``) and
    ``"down<axis>"`` (the face with the lower one); only faces that exist are present.
    """
    origin = plan.stage_origin(index)
    faces: dict[str, NDArray[Any]] = {}
    for axis, _ in plan.upper_neighbors(index):
        box_lo, _ = face_views(plan, index, axis)
        faces[f"up{axis}"] = chunk[box_slices(box_lo, origin)]
    for axis in range(1 if plan.time_axis else 0, plan.ndim):
        if index[axis] > 0:
            lower = list(index)
            lower[axis] -= 1
            _, box_hi = face_views(plan, tuple(lower), axis)
            faces[f"down{axis}"] = chunk[box_slices(box_hi, origin)]
    return faces


#: a faces log's name: ``log.<host>.<pid>.<id>.faces`` (one per writing process)
LOG_PREFIX = "log."
LOG_SUFFIX = ".faces"


@dataclass(frozen=True)
class FacesRef:
    """Where one tile's faces lie: a byte range of a faces log, with its CRC-32.

    A segment record keeps these four numbers (``faces_log``, ``faces_offset``,
    ``faces_bytes``, ``faces_crc``), so the driver checks a tile's faces with the size of its
    log (one stat per log) and stitch checks the bytes it reads.
    """

    log: str
    offset: int
    nbytes: int
    crc: int

    def as_record(self) -> dict[str, Any]:
        return {
            "faces_log": self.log,
            "faces_offset": self.offset,
            "faces_bytes": self.nbytes,
            "faces_crc": self.crc,
        }

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> FacesRef | None:
        """The faces a segment record points to (None: it has none, or not all four keys)."""
        try:
            ref = cls(
                str(record["faces_log"]),
                int(record["faces_offset"]),
                int(record["faces_bytes"]),
                int(record["faces_crc"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        bad_name = "/" in ref.log or not ref.log.startswith(LOG_PREFIX)
        return None if bad_name or ref.offset < 0 or ref.nbytes <= 0 else ref


def encode_faces(faces: Mapping[str, NDArray[Any]]) -> bytes:
    """``faces`` as zstd over ``header length (4 bytes, little endian) + JSON header + the
    arrays' bytes``; the header lists each array's name, dtype and shape, in order."""
    arrays = {name: np.ascontiguousarray(a) for name, a in faces.items()}
    header = json.dumps([[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]).encode()
    payload = b"".join(
        [struct.pack("<I", len(header)), header, *(a.tobytes() for a in arrays.values())]
    )
    return bytes(_CODEC.encode(payload))


def decode_faces(data: bytes) -> dict[str, NDArray[Any]]:
    """The arrays :func:`encode_faces` wrote."""
    payload = memoryview(bytes(_CODEC.decode(data)))
    (n,) = struct.unpack_from("<I", payload)
    pos = 4 + n
    faces: dict[str, NDArray[Any]] = {}
    for name, dtype, shape in json.loads(bytes(payload[4:pos])):
        dt = np.dtype(dtype)
        count = math.prod(shape)
        faces[name] = np.frombuffer(payload, dt, count, pos).reshape(shape)
        pos += count * dt.itemsize
    return faces


class FacesLog:
    """Appends tiles' faces to this process's faces log under ``root`` (``<run_dir>/faces``).

    One log per process (:class:`~blockbuster.run.files.AppendLog`), so that the run
    directory's file count grows with the workers, not with the tiles. Synced (:meth:`sync`)
    before the records that point to it, not after each append; the tile's record keeps the
    range and its CRC-32, which the driver and stitch check, and a tile whose faces did not
    survive is segmented again.
    """

    def __init__(self, root: Path) -> None:
        self._log = AppendLog(root, LOG_PREFIX, LOG_SUFFIX, durable_name=False)

    def append(self, faces: Mapping[str, NDArray[Any]]) -> FacesRef:
        """Append one tile's ``faces``; return where they lie."""
        data = encode_faces(faces)
        name, offset = self._log.append(data)
        return FacesRef(name, offset, len(data), zlib.crc32(data))

    def sync(self) -> None:
        """Flush what this process appended to storage (before the records that point to it
        are written: a reader on another host of a network filesystem then sees the bytes)."""
        self._log.sync()

    def close(self) -> None:
        self._log.close()


def read_faces(root: Path, ref: FacesRef) -> dict[str, NDArray[Any]] | None:
    """The faces ``ref`` points to, or None when its log is missing, shorter than the range,
    or the bytes there are not the ones written (their CRC-32 differs)."""
    try:
        with open(Path(root, ref.log), "rb") as f:
            data = os.pread(f.fileno(), ref.nbytes, ref.offset)
    except FileNotFoundError:
        return None
    if len(data) != ref.nbytes or zlib.crc32(data) != ref.crc:
        return None
    return decode_faces(data)


def log_sizes(root: Path) -> dict[str, int]:
    """The size of every faces log under ``root`` (one directory listing)."""
    try:
        with os.scandir(root) as entries:
            return {
                e.name: e.stat().st_size
                for e in entries
                if e.name.startswith(LOG_PREFIX) and e.name.endswith(LOG_SUFFIX)
            }
    except FileNotFoundError:
        return {}
