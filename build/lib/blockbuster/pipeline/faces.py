"""Face files: each tile's side of every face that stitch compares, saved by segment.

Stitch compares a tile with its upper neighbour over the voxels :func:`face_views` names: the
two touching planes without a halo, a band around the face with one. Reading those from the
stage decodes both tiles' whole chunks to use a few planes of each (a 64x256x256 tile decodes 4M
voxels for 64K). So the segment worker, which holds the tile's labels anyway, also writes the
tile's side of each of its faces (up to two per spatial axis) into one compressed file, and
stitch reads those instead of the stage.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import Zstd
from numpy.typing import NDArray

from blockbuster.io.boxes import Box, box_slices
from blockbuster.pipeline.plan import TilePlan
from blockbuster.run.files import write_atomic

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


def face_file(root: Path, tile: int) -> Path:
    """Where the faces of ``tile`` are kept under ``root`` (``<run_dir>/faces``)."""
    return Path(root) / f"{tile}.faces.zst"


def write_faces(root: Path, tile: int, faces: dict[str, NDArray[Any]]) -> Path:
    """Write ``faces`` for ``tile`` (whole, then renamed into place).

    The file is zstd over ``header length (4 bytes, little endian) + JSON header + the arrays'
    bytes``; the header lists each array's name, dtype and shape, in order.
    """
    arrays = {name: np.ascontiguousarray(a) for name, a in faces.items()}
    header = json.dumps([[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]).encode()
    payload = b"".join(
        [struct.pack("<I", len(header)), header, *(a.tobytes() for a in arrays.values())]
    )
    Path(root).mkdir(parents=True, exist_ok=True)
    path = face_file(root, tile)
    # no fsync: the segment record keeps the file's size, which the driver checks
    write_atomic(path, bytes(_CODEC.encode(payload)), durable=False)
    return path


def read_faces(root: Path, tile: int) -> dict[str, NDArray[Any]] | None:
    """The faces written for ``tile``, or None when it has no face file."""
    try:
        data = face_file(root, tile).read_bytes()
    except FileNotFoundError:
        return None
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
