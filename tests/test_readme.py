"""The README's examples run as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi

from blockbuster.synthetic import make_nuclei_volume

README = Path(__file__).parents[1] / "README.md"


def _block(marker: str) -> str:
    text = README.read_text()
    start = text.index(marker)
    code = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert code is not None
    return code.group(1)


def test_the_task_example_smooths_then_segments(tmp_path: Path, capsys) -> None:
    make_nuclei_volume(
        tmp_path / "image.zarr", shape=(128, 256, 256), count=120, chunks=(64, 64, 64)
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {"__name__": "__main__"}
        exec(compile(_block("<!-- task example"), "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert re.search(r"^smooth\s+2/2 blocks done, 0 failed ok$", out, re.M), out
    image = zarr.open_array(str(tmp_path / "image.zarr"))[:].astype(np.float32)
    smooth = zarr.open_array(str(tmp_path / "smooth.zarr"))[:]
    np.testing.assert_allclose(smooth, ndi.gaussian_filter(image, 2.0), rtol=1e-5, atol=1e-2)
    assert scope["labels"].ok and scope["labels"].num_labels > 50
