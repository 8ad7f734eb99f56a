"""The T1w tissue classes do not depend on how wide the brain mask's margin is (issue 15, session 8).

Before session 8 the classes were fitted on the whole margined mask, so every millimetre of margin brought
dark skull into the CSF class (the CSF/grey boundary moved) and bright scalp into white matter: on the
synthetic head margins of 0 / 2 / 4 mm read a planted 0.8 mm thinning as 0.26 / 0.90 / 3.37 mm. Now the
mixture is fitted on a fixed region and tissue not connected to the brain is dropped. A head phantom (white
matter, cortex, CSF, dark skull, bright scalp) segmented in masks of several margins must give the same grey
matter inside the brain and no brain tissue in the scalp."""
from __future__ import annotations

import numpy as np
import pytest

from incloud_kernel.features.segmentation import hard_labels, keep_brain_tissue, segment

#: Phantom radii (mm) and intensities: WM < 20, GM < 24, CSF < 27, skull < 32, scalp < 36, air beyond.
LAYERS = ((20.0, 2200.0), (24.0, 1800.0), (27.0, 1400.0), (32.0, 600.0), (36.0, 2300.0))


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """(T1-like image with Gaussian noise, 1 mm voxels, 80^3; radius of every voxel in mm)."""
    idx = np.indices((80, 80, 80), dtype=np.float32) - 39.5
    r = np.sqrt((idx ** 2).sum(0))
    image = np.zeros(r.shape, np.float32)
    for radius, value in reversed(LAYERS):
        image[r < radius] = value
    image += np.random.default_rng(0).normal(0.0, 60.0, r.shape).astype(np.float32)
    return np.clip(image, 0, None), r


def _segment(image: np.ndarray, r: np.ndarray, margin: float) -> dict[str, np.ndarray]:
    core = r < 24.0  # the template's brain mask: it ends at the pial surface
    fit = r < 26.0  # core + a 2 mm shell (features.t1.CLASS_SHELL_MM)
    return keep_brain_tissue(segment(image, r < 24.0 + margin, fit=fit), core)


@pytest.mark.parametrize("margin", [0.0, 10.0])
def test_tissue_classes_do_not_depend_on_the_mask_margin(margin: float) -> None:
    image, r = phantom()
    narrow = _segment(image, r, 2.0)
    wide = _segment(image, r, margin)
    brain = r < 24.0
    for tissue in ("CSF", "GM", "WM"):
        np.testing.assert_array_equal(narrow[tissue][brain], wide[tissue][brain])
    labels = hard_labels(wide)
    assert (labels[(r > 20.5) & (r < 23.5)] == 2).mean() > 0.95  # the cortex is grey matter
    if margin > 3.0:
        assert (labels[(r >= 24.5) & (r < 26.5)] == 1).mean() > 0.99  # the CSF over it is CSF
        assert (labels[(r >= 27.5) & (r < 24.0 + margin)] <= 1).all()  # skull and (bright) scalp are not brain


def test_probabilities_sum_to_one_in_the_mask_and_zero_outside() -> None:
    image, r = phantom()
    seg = _segment(image, r, 10.0)
    total = seg["CSF"] + seg["GM"] + seg["WM"]
    np.testing.assert_allclose(total[r < 34.0], 1.0, atol=1e-5)
    assert not total[r >= 34.5].any()
