"""T1w quality indices as MRIQC 24.0.2 defines them (``mriqc/qc/anatomical.py`` and its ``StructuralQC``
interface in ``mriqc/interfaces/anatomical.py``): SNR per tissue and Dietrich SNR, CNR, CJV, EFC, FBER,
WM2MAX, QI1, INU median/range, FWHM and tissue volume fractions.

MRIQC's steps are rebuilt with installed libraries only: N4 bias field (SimpleITK), brain mask and the
nasion-inion landmarks from an affine fit of the packaged average head (``incloud_kernel.deface``), tissue
probability maps from a 3-class Gaussian mixture (scikit-learn) instead of ANTs Atropos. It must never write
files or download anything; the estimator keeps its masks in memory for tests and the review dashboard.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from incloud_kernel.qc import masks, spatial
from incloud_kernel.qc.images import ImageLike, Loaded, QCInputError, load

TISSUES = ("csf", "gm", "wm")


def n4_bias_field(data: np.ndarray, affine: np.ndarray, mask: np.ndarray, shrink_mm: float = 6.0,
                  iterations: tuple[int, ...] = (50, 50, 30)) -> np.ndarray:
    """The multiplicative N4 bias field (Tustison 2010) of ``data`` on its own grid, mean about 1.

    Fitted on a copy block-averaged to ``shrink_mm`` voxels (N4's usual shrink factor: the field is smooth),
    then its B-spline is evaluated on the full grid. MRIQC runs ANTs' N4 the same way before its indices.
    """
    from incloud_kernel.deface.geometry import block_downsample, from_sitk, to_sitk

    low, low_aff = block_downsample(data, affine, shrink_mm)
    low_mask, _ = block_downsample(mask.astype(np.float32), affine, shrink_mm)
    image = sitk.Cast(to_sitk(np.clip(low, 0, None) + 1.0, low_aff), sitk.sitkFloat32)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    corrector.Execute(image, sitk.Cast(to_sitk((low_mask > 0.5).astype(np.uint8), low_aff), sitk.sitkUInt8))
    full = sitk.Cast(to_sitk(data, affine), sitk.sitkFloat32)
    return np.exp(from_sitk(corrector.GetLogBiasFieldAsImage(full))).astype(np.float32)


def _landmark_slices(s2t: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """Slice indices (k, canonical grid) of MRIQC's glabella and inion landmarks, carried from MNI space to
    the subject through the average head (``incloud_kernel.head_to_mni.HEAD_TO_MNI``) and the fit."""
    from incloud_kernel.head_to_mni import HEAD_TO_MNI

    flip = np.array([-1.0, -1.0, 1.0])
    m, o = HEAD_TO_MNI[:, :3], HEAD_TO_MNI[:, 3]
    out = []
    for ras in (masks.GLABELLA_MNI, masks.INION_MNI):
        head_lps = np.linalg.solve(m, np.asarray(ras) * flip - o)  # q = M p + o, LPS
        subject = np.linalg.inv(s2t) @ np.append(head_lps * flip, 1.0)
        out.append(float((np.linalg.inv(affine) @ subject)[2]))
    return out[0], out[1]


def tissue_pvms(data: np.ndarray, brain: np.ndarray, seed: int = 0,
                max_samples: int = 100_000) -> dict[str, np.ndarray]:
    """Probability maps of CSF, GM and WM inside ``brain``: a 3-class Gaussian mixture of the (bias-corrected)
    intensities, classes ordered by mean (T1w: CSF < GM < WM), posteriors as partial-volume maps."""
    from sklearn.mixture import GaussianMixture

    values = data[brain].astype(np.float64)[:, None]
    rng = np.random.default_rng(seed)
    sample = values if len(values) <= max_samples else values[rng.choice(len(values), max_samples, replace=False)]
    gmm = GaussianMixture(n_components=3, random_state=seed, n_init=1, max_iter=200).fit(sample)
    post = gmm.predict_proba(values)[:, np.argsort(gmm.means_.ravel())]
    out = {}
    for i, name in enumerate(TISSUES):
        pvm = np.zeros(data.shape, dtype=np.float32)
        pvm[brain] = post[:, i]
        out[name] = pvm
    return out


class StructuralQC:
    """Estimator (scikit-learn style): ``StructuralQC().fit(img).iqms_`` is the dict of T1w indices.

    Parameters are stored unchanged; ``fit`` keeps the masks it measured in (``masks_``: head, brain, rot,
    hat, art, air; ``pvms_``; ``bias_``; ``harmonized_``) so they can be shown or checked by hand.
    ``seed`` fixes the registration sampling and the mixture; ``n4_shrink_mm`` the N4 grid; ``zscore`` the
    artefact threshold of QI1 (MRIQC default 10).
    """

    def __init__(self, seed: int = 0, n4_shrink_mm: float = 6.0, zscore: float = 10.0) -> None:
        self.seed = seed
        self.n4_shrink_mm = n4_shrink_mm
        self.zscore = zscore

    def fit(self, img: ImageLike) -> "StructuralQC":
        im = load(img, ndim=3)
        data = np.clip(im.data, 0, None)
        if float(data.max()) <= 0:
            raise QCInputError(f"{im.name}: the image has no signal")
        head = masks.head_mask(data)
        if head.sum() < 100:
            raise QCInputError(f"{im.name}: fewer than 100 head voxels found")
        stripped = masks.skull_stripped(data, head, im.zooms)
        brain, glabella_k, inion_k = self._brain(im, data, head, stripped)
        self.bias_ = n4_bias_field(data, im.affine, brain if stripped else head, self.n4_shrink_mm)
        corrected = data / np.maximum(self.bias_, 1e-6)
        self.pvms_ = tissue_pvms(corrected, brain, self.seed)
        wm = ndimage.binary_erosion(self.pvms_["wm"] >= 0.9, structure=ndimage.generate_binary_structure(3, 2))
        wm_ref = float(np.median(corrected[wm])) if wm.any() else float(np.percentile(corrected[brain], 90))
        self.harmonized_ = (corrected * (1000.0 / wm_ref)).astype(np.float32)
        rot = masks.rotation_mask(data)
        if stripped:
            hat = np.zeros_like(head)
        else:
            hat = masks.hat_mask(head, glabella_k, inion_k) & ~rot
        art = masks.artifact_mask(data, hat, head, self.zscore)
        air = hat & ~art
        self.masks_ = {"head": head, "brain": brain, "rot": rot, "hat": hat, "art": art, "air": air}
        self.skull_stripped_ = stripped
        self.iqms_ = self._measure(data, im)
        return self

    def _brain(self, im: Loaded, data: np.ndarray, head: np.ndarray,
               stripped: bool) -> tuple[np.ndarray, float, float]:
        """Brain mask and landmark slices: the average head fitted to the subject (affine, mutual information)
        carries its brain mask; a skull-stripped input is its own brain (no landmarks: no hat)."""
        if stripped:
            return ndimage.binary_fill_holes(masks.largest_component(data > masks.zero_level(data))), 0.0, 0.0
        from incloud_kernel.deface.register import register_affine, resample_to
        from incloud_kernel.deface.template import load_template

        t = load_template()
        s2t = register_affine(data, im.affine, t.data, t.affine, seed=self.seed)
        prob = resample_to(t.brain.astype(np.float32), t.affine, data.shape, im.affine, s2t, order=1, cval=0.0)
        brain = (prob > 0.5) & head
        if brain.sum() < 100:
            raise QCInputError(f"{im.name}: the brain could not be located")
        glabella_k, inion_k = _landmark_slices(s2t, im.affine)
        return brain, glabella_k, inion_k

    def _measure(self, raw: np.ndarray, im: Loaded) -> dict[str, float]:
        x = self.harmonized_
        m = self.masks_
        stats = {k: spatial.summary_stats(x, p) for k, p in self.pvms_.items()}
        bg = spatial.summary_stats(x, m["air"].astype(np.float32)) if m["air"].any() else \
            {"mad": 0.0, "stdv": 0.0}
        out: dict[str, float] = {}
        for k in TISSUES:
            out[f"snr_{k}"] = spatial.snr(stats[k]["median"], stats[k]["stdv"], stats[k]["n"])
        out["snr_total"] = float(np.mean([out[f"snr_{k}"] for k in TISSUES]))
        for k in TISSUES:
            out[f"snrd_{k}"] = spatial.snr_dietrich(stats[k]["median"], bg["mad"], bg["stdv"])
        out["snrd_total"] = float(np.mean([out[f"snrd_{k}"] for k in TISSUES]))
        wm, gm = stats["wm"], stats["gm"]
        out["cnr"] = spatial.cnr(wm["median"], gm["median"], bg["stdv"], wm["stdv"], gm["stdv"])
        out["cjv"] = spatial.cjv(wm["median"], gm["median"], wm["mad"], gm["mad"])
        out["fber"] = spatial.fber(x, m["head"].astype(np.uint8), m["rot"].astype(np.uint8))
        out["efc"] = spatial.efc(x, m["rot"].astype(np.uint8))
        out["wm2max"] = spatial.wm2max(x, wm["median"])
        out["qi_1"] = spatial.art_qi1(m["hat"] & ~m["art"], m["art"])
        fx, fy, fz, favg = spatial.fwhm_classic(raw, m["brain"])
        out.update({"fwhm_x": fx, "fwhm_y": fy, "fwhm_z": fz, "fwhm_avg": favg})
        out.update({f"icvs_{k}": v for k, v in spatial.volume_fractions(self.pvms_).items()})
        seg = np.zeros(x.shape, dtype=bool)
        for p in self.pvms_.values():
            seg |= p > 0
        bias = self.bias_[seg]
        out["inu_med"] = float(np.median(bias))
        out["inu_range"] = float(abs(np.percentile(bias, 95) - np.percentile(bias, 5)))
        out["skull_stripped"] = float(self.skull_stripped_)
        return out


def compute_t1w(img: ImageLike, *, seed: int = 0, n4_shrink_mm: float = 6.0,
                zscore: float = 10.0) -> dict[str, float]:
    """Every T1w index of one image (path or nibabel image); see :class:`StructuralQC`. Raises
    ``QCInputError`` for an image that cannot be measured."""
    return StructuralQC(seed=seed, n4_shrink_mm=n4_shrink_mm, zscore=zscore).fit(img).iqms_
