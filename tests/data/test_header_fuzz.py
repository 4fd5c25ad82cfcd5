"""Property test: a real MRI whose NIfTI header is mutated gives a clear error naming the file, or a correct result,
never a crash and never a silently wrong one.

"Correct result": ``volmae-infer``'s label map has the input's declared 3D shape and the affine nibabel reads from the
mutated header (the file's own claim about its grid), and every label is one of the model's classes. "Clear error":
a :class:`~volmae.errors.VolmaeError` (found through MONAI's wrapping) whose message names the file. Anything else
(a numpy / nibabel / torch exception escaping, a hang, a label map on another grid) fails the test.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.inference.test_infer import model_checkpoint
from volmae.errors import find_volmae_error
from volmae.inference.infer import InferConfig, infer

FLOATS = st.sampled_from([0.0, -1.0, 1e-9, 1e9, float("nan"), float("inf"), 0.5, 3.0])
MUTATIONS = st.fixed_dictionaries(
    {},
    optional={
        "dim": st.tuples(st.integers(-1, 8), *[st.sampled_from([0, 1, 2, 35, 2**15 - 1]) for _ in range(3)]),
        "pixdim": st.tuples(FLOATS, FLOATS, FLOATS),
        "qform_code": st.integers(-1, 5),
        "sform_code": st.integers(-1, 5),
        "srow": st.sampled_from(["zero", "nan", "shear", "flip"]),
        "quatern": st.tuples(FLOATS, FLOATS, FLOATS),
        "datatype": st.sampled_from([2, 4, 8, 16, 64, 256, 512, 768, 1234]),
        "vox_offset": st.sampled_from([0.0, 348.0, 352.0, 353.0, 1e9]),
        "scl": st.tuples(FLOATS, FLOATS),
    },
)


def mutate(src: nib.Nifti1Image, m: dict) -> tuple[bytes, bytes]:
    """``(header bytes, data bytes)`` of ``src`` (stored as a single .nii) with the header fields of ``m`` changed
    in place in the raw header (nibabel's setters would refuse most of these values)."""
    hdr = src.header.copy()
    raw = np.frombuffer(hdr.binaryblock, dtype=hdr.structarr.dtype).copy()
    if "dim" in m:
        n, *sizes = m["dim"]
        raw["dim"][0][:4] = [n, *sizes]
    if "pixdim" in m:
        raw["pixdim"][0][1:4] = m["pixdim"]
    if "qform_code" in m:
        raw["qform_code"] = m["qform_code"]
    if "sform_code" in m:
        raw["sform_code"] = m["sform_code"]
    if "srow" in m:
        rows = np.stack([raw["srow_x"][0], raw["srow_y"][0], raw["srow_z"][0]])
        rows = {
            "zero": np.zeros_like(rows),
            "nan": np.full_like(rows, np.nan),
            "shear": rows + np.array([[0, 0.9, 0, 0], [0.9, 0, 0, 0], [0, 0, 0, 0]], rows.dtype),
            "flip": rows * np.array([[-1], [1], [-1]], rows.dtype),
        }[m["srow"]]
        raw["srow_x"], raw["srow_y"], raw["srow_z"] = rows
    if "quatern" in m:
        raw["quatern_b"], raw["quatern_c"], raw["quatern_d"] = m["quatern"]
    if "datatype" in m:
        raw["datatype"] = m["datatype"]
    if "vox_offset" in m:
        raw["vox_offset"] = m["vox_offset"]
    if "scl" in m:
        raw["scl_slope"], raw["scl_inter"] = m["scl"]
    data = np.asarray(src.dataobj).tobytes(order="F")
    return raw.tobytes(), data


@pytest.mark.realdata
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=MUTATIONS)
@example(m={"dim": (5, 2, 2, 2)})  # found by this test: a 5D X Y Z 1 1 header reached MONAI's Orientation as 4D
def test_mutated_headers_give_a_clear_error_or_a_correct_result(tmp_path_factory, msd_hippocampus, m):
    tmp = tmp_path_factory.mktemp("fuzz")
    model = model_checkpoint(tmp / "model.pt", "hippocampus", roi=(40, 56, 40))
    src = nib.load(msd_hippocampus / "imagesTr" / "hippocampus_001.nii.gz")
    header, data = mutate(src, m)
    path = tmp / "case.nii"
    path.write_bytes(header + b"\0" * 4 + data)  # 348-byte header, 4-byte extension flag, voxels at 352
    out = tmp / "out.nii.gz"
    try:
        (done,) = infer(InferConfig([str(path)], str(model), output=str(out), quiet=True, device="cpu"))
    except Exception as e:  # noqa: BLE001 - classified below
        err = find_volmae_error(e)
        assert err is not None, f"{m}: crashed with {type(e).__name__}: {e}"
        assert "case.nii" in str(err), f"{m}: error does not name the file: {err}"
        assert not out.exists(), f"{m}: an output was left behind after the error"
        return
    img = nib.load(path)
    seg = nib.load(done.label_map)
    assert seg.shape == img.shape[:3], f"{m}: label map {seg.shape} for an input of {img.shape}"
    assert np.allclose(seg.affine, img.affine, atol=1e-3), f"{m}: label map on another grid"
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2}
