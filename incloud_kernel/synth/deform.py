"""Per-participant anatomy: head pose, a smooth nonlinear deformation and the planted volume effects.

A participant's head is the template head pulled through one transform chain (SimpleITK pull-back, LPS mm):
scanner point -> pose (similarity: rotation, translation, head size) -> smooth random B-spline warp
-> own face (seeded bumps at nose, lips, chin, cheeks, brows, ears; 0 near the brain: ``synth.face``)
-> ventricular enlargement with age -> regional shrinkage by diagnosis -> template head point (-> MNI point).
The volume effects are exact radial scalings about each region's centre inside an ellipsoid (with a smooth
transition outside), so a region's volume changes by exactly the planted percentage. ``Participant.points`` +
``sample`` evaluate the chain in numpy (what the renderers use: several times faster than ITK's composite
transforms); ``fast_chain`` wraps those same points as a SimpleITK transform for callers that resample with
ITK; ``chain`` is the pure SimpleITK form (B-spline, and the face as a 3 mm field: within about 1 mm of
``points`` in the face, which interpolates the bumps from an 8 mm grid). The face
is anatomy, not a planted effect: ``with_effects=False`` keeps it. Never writes files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from incloud_kernel.deface.blend import smoothstep
from incloud_kernel.synth import face
from incloud_kernel.synth.anatomy import REGIONS, Templates, load_templates, physical_grid

#: Outer edge of the transition zone, in units of the inner ellipsoid radius (1 = no transition).
TRANSITION = 1.8


@dataclass
class VolumeEffect:
    """Scale ``region``'s volume by ``factor`` (0.85 = 15 % smaller) about its centre, in MNI space."""

    region: str
    factor: float

    @property
    def percent(self) -> float:
        return round((self.factor - 1.0) * 100.0, 6)


def radial_map(points_mni: np.ndarray, effect: VolumeEffect) -> np.ndarray:
    """Pull-back map of one volume effect on MNI LPS points (N, 3) -> MNI LPS points.

    Inside the inner ellipsoid the map is ``c + (q - c) / s`` with ``s = factor ** (1/3)``, so the preimage of
    the region is the region scaled by ``s`` about ``c`` (volume times ``factor``). The radial profile is
    monotonic for factors between 0.4 and 2.5, so the map is invertible (no folding).
    """
    r = REGIONS[effect.region]
    s = effect.factor ** (1.0 / 3.0)
    inner = np.asarray(r.radii) * max(1.0, s)
    rel = points_mni - r.center_lps
    rho = np.sqrt(((rel / inner) ** 2).sum(-1))
    w = 1.0 - smoothstep((rho - 1.0) / (TRANSITION - 1.0))
    return r.center_lps + rel * (1.0 + (1.0 / s - 1.0) * w)[:, None]


def _effect_box(t: Templates, effect: VolumeEffect) -> tuple[np.ndarray, np.ndarray]:
    """Head-space LPS box (lo, hi mm) outside which the effect is the identity."""
    r = REGIONS[effect.region]
    s = effect.factor ** (1.0 / 3.0)
    half = np.asarray(r.radii) * max(1.0, s) * TRANSITION + 2.0
    corners_mni = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half + r.center_lps
    M = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3)
    corners_head = (corners_mni - np.asarray(t.head_to_mni.GetTranslation())) @ np.linalg.inv(M).T
    return corners_head.min(0) - 2.0, corners_head.max(0) + 2.0


def apply_effect(points: np.ndarray, t: Templates, effect: VolumeEffect) -> None:
    """Pull head-space LPS points (3, ...) through one volume effect, in place (exact radial map in MNI space;
    only points inside the effect's box move)."""
    lo, hi = _effect_box(t, effect)
    flat = points.reshape(3, -1)
    inside = np.ones(flat.shape[1], bool)
    for a in range(3):
        inside &= (flat[a] >= lo[a]) & (flat[a] <= hi[a])
    idx = np.flatnonzero(inside)
    if not len(idx):
        return
    M = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3)
    o = np.asarray(t.head_to_mni.GetTranslation())
    p = flat[:, idx].T.astype(np.float64)
    moved = (radial_map(p @ M.T + o, effect) - o) @ np.linalg.inv(M).T
    flat[:, idx] = moved.T


def _effect_transform(t: Templates, effect: VolumeEffect) -> sitk.Transform:
    """The effect as a local displacement field in head space (identity outside its box)."""
    M = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3)
    Minv = np.linalg.inv(M)
    o = t.head_to_mni.GetTranslation()
    lo, hi = _effect_box(t, effect)
    spacing = 1.0
    size = np.ceil((hi - lo) / spacing).astype(int) + 1
    grid = sitk.Image([int(v) for v in size], sitk.sitkVectorFloat64, 3)
    grid.SetOrigin(lo.tolist())
    grid.SetSpacing([spacing] * 3)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    p = lo + idx * spacing
    q = p @ M.T + np.asarray(o)
    p2 = (radial_map(q, effect) - np.asarray(o)) @ Minv.T
    disp = (p2 - p).reshape(*size, 3).transpose(2, 1, 0, 3)  # to numpy (z, y, x, 3)
    disp[0, :, :], disp[-1, :, :], disp[:, 0, :], disp[:, -1, :], disp[:, :, 0], disp[:, :, -1] = 0, 0, 0, 0, 0, 0
    field_img = sitk.GetImageFromArray(np.ascontiguousarray(disp), isVector=True)
    field_img.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(field_img)


@dataclass
class Participant:
    """One participant's geometry: everything needed to render any series of any of their visits.

    ``pose``: rotation (degrees, about x, y, z of the scanner LPS frame), translation (mm) and isotropic
    ``scale`` of the head relative to the template. ``warp_mm``: standard deviation of the B-spline control
    point displacements (mm). ``effects``: planted volume changes, applied nearest the template last.
    ``tissue_effects``: planted grey-matter loss (``synth.atrophy.TissueEffect``: atrophy, thinning), an edit of
    the template head's T1 the participant is rendered from (T1 only; the chain does not change).
    ``face_mm``: typical shift of the face bumps (each 2/3..4/3 of it; 0 = the template's own face); the bumps
    derive from ``seed`` (``face_bumps``), so these fields alone rebuild the same face.
    """

    seed: int
    rotation_deg: list[float]
    translation_mm: list[float]
    scale: float
    warp_mm: float
    effects: list[VolumeEffect] = field(default_factory=list)
    face_mm: float = 12.0
    tissue_effects: list[Any] = field(default_factory=list)
    _chain: sitk.CompositeTransform | None = field(default=None, repr=False)
    _effects_cache: dict = field(default_factory=dict, repr=False)

    def _effect(self, t: Templates, effect: VolumeEffect) -> sitk.Transform:
        key = (effect.region, effect.factor)
        if key not in self._effects_cache:
            self._effects_cache[key] = _effect_transform(t, effect)
        return self._effects_cache[key]

    @classmethod
    def random(cls, rng: np.random.Generator, effects: list[VolumeEffect], warp_mm: float = 2.5,
               face_mm: float = 12.0) -> "Participant":
        return cls(
            seed=int(rng.integers(2**31)),
            rotation_deg=[float(v) for v in rng.uniform(-4, 4, 3)],
            translation_mm=[float(v) for v in rng.uniform(-4, 4, 3)],
            scale=float(rng.uniform(0.95, 1.05)),
            warp_mm=warp_mm,
            effects=effects,
            face_mm=face_mm,
        )

    @classmethod
    def from_truth(cls, p: dict[str, Any], effects: list[VolumeEffect] | None = None) -> "Participant":
        """The participant a study's ground truth describes (``StudyTruth.participant``), with ``effects``
        (none by default: the anatomy without planted changes). Truth written before faces existed has no
        ``face_mm`` and was made with the template's own face (0)."""
        return cls(seed=p["seed"], rotation_deg=p["rotation_deg"], translation_mm=p["translation_mm"],
                   scale=p["scale"], warp_mm=p["warp_mm"], effects=list(effects or []),
                   face_mm=p.get("face_mm", 0.0))

    def template_labels(self, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
        """The refacer's template label bits (``deface.template.BRAIN``, ``FACE``...) carried onto a series grid
        (``shape``, RAS ``affine``) by this participant's pose, warp and face, planted effects left out: the true
        anatomy a refacing of this participant's images is checked against (uint8, same shape)."""
        from incloud_kernel.deface.geometry import from_sitk, to_sitk

        ref = to_sitk(np.zeros(shape, np.float32), affine)
        lab = sitk.Resample(face.refacer_labels(), ref, self.fast_chain(ref, with_effects=False),
                            sitk.sitkNearestNeighbor, 0)
        return from_sitk(lab).astype(np.uint8)

    def face_bumps(self) -> list[face.Bump]:
        """This participant's face bumps (template head LPS mm), derived from ``seed`` and ``face_mm``."""
        return list(face.face_bumps(int(self.seed), float(self.face_mm)))

    def brain_center(self) -> np.ndarray:
        """Scanner LPS point of the brain centre (where series fields of view are centred)."""
        t = load_templates()
        M = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3)
        head_pt = np.linalg.solve(M, np.array([0.0, 18.0, 12.0]) - np.asarray(t.head_to_mni.GetTranslation()))
        return np.asarray(self.pose().GetInverse().TransformPoint(head_pt.tolist()))

    def pose(self) -> sitk.Similarity3DTransform:
        t = load_templates()
        center = t.head.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t.head.GetSize()])
        p = sitk.Similarity3DTransform()
        p.SetCenter(center)
        e = sitk.Euler3DTransform()
        e.SetRotation(*np.deg2rad(self.rotation_deg))
        p.SetMatrix(e.GetMatrix())
        p.SetScale(1.0 / self.scale)
        p.SetTranslation(self.translation_mm)
        return p

    def chain(self, with_effects: bool = True) -> sitk.CompositeTransform:
        """Scanner LPS -> template head LPS (pull-back transform for ``sitk.Resample``)."""
        if with_effects and self._chain is not None:
            return self._chain
        t = load_templates()
        rng = np.random.default_rng([self.seed, 11])
        warp = sitk.BSplineTransformInitializer(t.head, [4, 4, 4], 3)
        warp.SetParameters((rng.standard_normal(len(warp.GetParameters())) * self.warp_mm).tolist())
        parts: list[sitk.Transform] = []
        if with_effects:
            # applied last-added-first: the effect nearest the template is added first
            parts.extend(self._effect(t, e) for e in reversed(self.effects))
        if self.face_bumps():
            parts.append(self._face_transform())
        parts.extend([warp, self.pose()])
        chain = sitk.CompositeTransform(parts)
        if with_effects:
            self._chain = chain
        return chain

    def chain_to_mni(self, with_effects: bool = True) -> sitk.CompositeTransform:
        t = load_templates()
        return sitk.CompositeTransform([t.head_to_mni, self.chain(with_effects)])

    def _face_transform(self) -> sitk.DisplacementFieldTransform:
        """The face bumps as a displacement field on the brain-distance grid (template head space)."""
        ref = face.brain_distance_map()
        disp = face.face_displacement(self.face_bumps(), physical_grid(ref)).astype(np.float64)
        field_img = sitk.GetImageFromArray(disp, isVector=True)
        field_img.CopyInformation(ref)
        return sitk.DisplacementFieldTransform(field_img)

    def _pose_and_warp(self, t: Any) -> sitk.CompositeTransform:
        """This person's smooth part of the chain: a seeded B-spline warp of the template head, then the pose."""
        rng = np.random.default_rng([self.seed, 11])
        warp = sitk.BSplineTransformInitializer(t.head, [4, 4, 4], 3)
        warp.SetParameters((rng.standard_normal(len(warp.GetParameters())) * self.warp_mm).tolist())
        return sitk.CompositeTransform([warp, self.pose()])

    def fast_chain(self, ref: sitk.Image, with_effects: bool = True, to_mni: bool = False,
                   motion: sitk.Transform | None = None) -> sitk.Transform:
        """The chain for resampling onto ``ref`` with SimpleITK: ``points`` of ``ref`` (plus a 4-voxel margin)
        held as a displacement field on ``ref``'s grid, so ITK sees at every voxel centre exactly the template
        point the numpy renderers use (face included; effects exact). ``motion`` (scanner -> scanner, pull-back)
        is applied first, before the pose. Memory: 24 bytes per voxel of ``ref``."""
        t = load_templates()
        margin = 4
        direction = np.array(ref.GetDirection()).reshape(3, 3)
        spacing = np.asarray(ref.GetSpacing())
        big = _like(ref, [int(n) + 2 * margin for n in ref.GetSize()],
                    np.asarray(ref.GetOrigin()) - direction @ (spacing * margin), None)
        pts = self.points(big, with_effects=with_effects)
        disp = np.moveaxis(pts, 0, -1).astype(np.float64) - physical_grid(big)
        field_img = sitk.GetImageFromArray(disp, isVector=True)
        field_img.CopyInformation(big)
        parts: list[sitk.Transform] = []
        if to_mni:
            parts.append(t.head_to_mni)
        parts.append(sitk.DisplacementFieldTransform(field_img))
        if motion is not None:
            parts.append(motion)
        return sitk.CompositeTransform(parts)

    def points(self, ref: sitk.Image, with_effects: bool = True, to_mni: bool = False,
               step: float = 8.0) -> np.ndarray:
        """Template point (LPS mm in head space, or MNI space with ``to_mni``) of every voxel of ``ref``: float32
        array (3, z, y, x), numpy order of ``ref``; feed it to ``sample``.

        The chain computed in numpy: pose and warp evaluated on a ``step`` mm grid and upsampled trilinearly by
        separable interpolation matrices (exact for the pose; the warp's control points are about 60 mm apart,
        so its error is far below 0.1 mm); the face bumps and the brain distance evaluated on the same grid and
        upsampled with them, the gate applied per voxel (so a voxel whose interpolated distance to the brain is
        under ``face.GATE_MM[0]`` is exactly unmoved; bumps 12-18 mm wide: about 0.5 mm interpolation error at
        their peaks); volume effects applied exactly (``radial_map``) to the voxels near their region.
        """
        t = load_templates()
        smooth = self._pose_and_warp(t)
        direction = np.array(ref.GetDirection()).reshape(3, 3)
        spacing = np.asarray(ref.GetSpacing())
        size = np.asarray(ref.GetSize())
        csize = [int(np.ceil((n - 1) * sp / step)) + 3 for n, sp in zip(size, spacing)]
        corigin = np.asarray(ref.GetOrigin()) - direction @ np.full(3, step)
        field = sitk.TransformToDisplacementField(smooth, sitk.sitkVectorFloat64, csize, corigin.tolist(),
                                                  [step] * 3, direction.ravel().tolist())
        coarse = physical_grid(field) + sitk.GetArrayViewFromImage(field)  # head points (cz, cy, cx, 3)
        M = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3)
        o = np.asarray(t.head_to_mni.GetTranslation())
        head = coarse
        coarse = coarse @ M.T + o if to_mni else coarse
        # separable trilinear upsampling: (3, cz, cy, cx) -> (3, z, y, x)
        w = [_lerp_matrix(int(n), float(sp) / step, c) for n, sp, c in zip(size, spacing, csize)]  # x, y, z
        pts = _upsample(np.moveaxis(coarse, -1, 0).astype(np.float32), w)
        bumps = self.face_bumps()
        if bumps:
            self._add_face(pts, head, w, bumps, M if to_mni else None)
        if with_effects and self.effects:
            self.apply_effects(pts, to_mni)
        return pts

    @staticmethod
    def _add_face(pts: np.ndarray, head: np.ndarray, w: list[np.ndarray], bumps: list[face.Bump],
                  M: np.ndarray | None) -> None:
        """Add the face to ``points``' output in place: bump displacement and brain distance at the coarse nodes
        (``head``: their template head points, (cz, cy, cx, 3)) upsampled like the points, the gate applied per
        voxel (a voxel whose interpolated brain distance is under ``face.GATE_MM[0]`` gets exactly nothing).
        Only the voxels next to a node with a non-zero bump are touched. ``M``: head -> MNI matrix, if the
        points are MNI points."""
        disp = face.bump_displacement(bumps, head)
        live = np.argwhere(np.abs(disp).max(-1) > 0)  # node indices (z, y, x)
        if not len(live):
            return
        rows, cols = [], []
        for axis, wa in zip((2, 1, 0), w):  # numpy axis of the coarse grid for w's x, y, z
            nlo, nhi = int(live[:, axis].min()), int(live[:, axis].max())
            touched = np.flatnonzero(wa[:, nlo:nhi + 1].any(1))  # voxels that interpolate a live node
            if not len(touched):  # live nodes only in the outer ring no voxel uses
                return
            rows.append(slice(int(touched[0]), int(touched[-1]) + 1))
            cols.append(slice(max(nlo - 1, 0), nhi + 2))  # every node those voxels interpolate
        (xr, yr, zr), (xc, yc, zc) = rows, cols
        if M is not None:
            disp = disp @ M.T
        chans = np.concatenate([disp, face.distance_at(head)[..., None]], -1)[zc, yc, xc]
        sub = _upsample(np.moveaxis(chans, -1, 0).astype(np.float32),
                        [w[0][xr, xc], w[1][yr, yc], w[2][zr, zc]])
        sub[:3] *= face.gate(sub[3], out=sub[3])
        pts[:, zr, yr, xr] += sub[:3]

    def apply_effects(self, pts: np.ndarray, to_mni: bool = False) -> None:
        """Apply the volume effects exactly (in place) to ``points(..., with_effects=False)`` output: only the
        voxels whose head point may lie in an effect's box move."""
        t = load_templates()
        M = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3)
        Minv = np.linalg.inv(M)
        o = np.asarray(t.head_to_mni.GetTranslation())
        sub = 4
        coarse = np.moveaxis(pts[:, ::sub, ::sub, ::sub], 0, -1)
        if to_mni:
            coarse = (coarse - o) @ Minv.T
        boxes = [_effect_box(t, e) for e in self.effects]
        near = np.zeros(coarse.shape[:3], bool)
        for lo, hi in boxes:
            near |= np.all((coarse >= lo - 8.0) & (coarse <= hi + 8.0), axis=-1)
        if not near.any():
            return
        where = np.argwhere(near)
        lo_i = np.maximum(where.min(0) * sub - sub, 0)
        hi_i = np.minimum(where.max(0) * sub + sub + 1, pts.shape[1:])
        sl = (slice(None),) + tuple(slice(int(a), int(b)) for a, b in zip(lo_i, hi_i))
        box = pts[sl]
        p = box.reshape(3, -1).astype(np.float64)
        if to_mni:
            p = Minv @ (p - o[:, None])
        for e, (lo, hi) in zip(self.effects, boxes):
            inside = (p[0] >= lo[0]) & (p[0] <= hi[0])
            for a in (1, 2):
                inside &= (p[a] >= lo[a]) & (p[a] <= hi[a])
            idx = np.flatnonzero(inside)
            if len(idx):
                p[:, idx] = Minv @ (radial_map((M @ p[:, idx]).T + o, e) - o).T
        if to_mni:
            p = M @ p + o[:, None]
        pts[sl] = p.reshape(box.shape)


def to_mni(points: np.ndarray) -> np.ndarray:
    """Template head LPS points (3, ...) -> MNI LPS points (float32, same shape): the template affine, so
    ``to_mni(p.points(ref))`` equals ``p.points(ref, to_mni=True)`` up to float32 rounding at a third of the cost."""
    t = load_templates()
    M = np.array(t.head_to_mni.GetMatrix()).reshape(3, 3).astype(np.float32)
    o = np.asarray(t.head_to_mni.GetTranslation(), np.float32)
    flat = points.reshape(3, -1)
    return (M @ flat + o[:, None]).reshape(points.shape)


def _like(ref: sitk.Image, size: list[int], origin: np.ndarray, step: float | None) -> sitk.Image:
    """An empty grid with ``ref``'s direction, the given size (x, y, z), origin and spacing (``step`` or ref's)."""
    img = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    img.SetDirection(ref.GetDirection())
    img.SetSpacing([step] * 3 if step else ref.GetSpacing())
    img.SetOrigin([float(v) for v in origin])
    return img


def _upsample(coarse: np.ndarray, w: list[np.ndarray]) -> np.ndarray:
    """Separable linear interpolation of (channels, cz, cy, cx) by the x, y, z weight matrices ``w`` (each
    (n, c)): (channels, nz, ny, nx) float32."""
    nc, cz = coarse.shape[:2]
    d = coarse @ w[0].T
    d = w[1] @ d
    return (w[2] @ d.reshape(nc, cz, -1)).reshape(nc, w[2].shape[0], w[1].shape[0], w[0].shape[0])


def _lerp_matrix(n: int, ratio: float, coarse: int) -> np.ndarray:
    """(n, coarse) linear interpolation weights: output voxel i sits at coarse index ``1 + i * ratio``."""
    c = 1.0 + np.arange(n) * ratio
    i0 = np.clip(np.floor(c).astype(int), 0, coarse - 2)
    f = c - i0
    w = np.zeros((n, coarse), np.float32)
    w[np.arange(n), i0] = 1.0 - f
    w[np.arange(n), i0 + 1] = f
    return w


def axial_twin(ref: sitk.Image) -> tuple[sitk.Image, Callable[[np.ndarray], np.ndarray]]:
    """For a grid whose axes are LPS axes up to sign and order (sagittal, coronal): the axial grid holding the
    same voxel centres, and the function turning an axial-grid array (z, y, x) into ``ref``'s numpy order.
    Sampling on the axial twin walks the (axial) templates in memory order: about twice as fast."""
    D = np.array(ref.GetDirection()).reshape(3, 3)
    if not np.allclose(np.abs(D).sum(0), 1.0) or not np.allclose(np.abs(D).sum(1), 1.0):
        return ref, lambda a: a
    axis_of = [int(np.argmax(np.abs(D[j]))) for j in range(3)]  # LPS axis j <- ref axis axis_of[j]
    size, sp, origin = np.asarray(ref.GetSize()), np.asarray(ref.GetSpacing()), np.asarray(ref.GetOrigin())
    twin = sitk.Image([int(size[a]) for a in axis_of], sitk.sitkUInt8)
    twin.SetSpacing([float(sp[a]) for a in axis_of])
    twin.SetOrigin([float(origin[j] if D[j, a] > 0 else origin[j] - (size[a] - 1) * sp[a])
                    for j, a in enumerate(axis_of)])
    flips = [D[j, a] < 0 for j, a in enumerate(axis_of)]

    def to_ref(arr: np.ndarray) -> np.ndarray:
        for j in range(3):  # twin numpy axis 2 - j is LPS axis j
            if flips[j]:
                arr = np.flip(arr, 2 - j)
        # ref numpy axis 2 - a holds ref axis a = axis_of[j], which is twin numpy axis 2 - j
        order = [2 - axis_of.index(a) for a in (2, 1, 0)]
        return np.ascontiguousarray(np.transpose(arr, order))

    return twin, to_ref


_ARRAYS: dict[int, tuple[sitk.Image, np.ndarray]] = {}


def warm_up() -> None:
    """Load the templates, their voxel arrays, the brain distance map of the face gate, the head's tissue
    classes and scipy.ndimage now (about 8 s), so processes forked afterwards
    (``make_cohort``'s workers) share them instead of each loading its own."""
    from scipy import ndimage  # noqa: F401

    from incloud_kernel.synth.atrophy import head_tissue

    t = load_templates()
    for img in (t.head, t.gm, t.wm, t.csf):
        _voxels(img)
    face.brain_distance_map()
    head_tissue()  # the planted grey-matter loss's tissue classes (AD participants, thinning)


def _voxels(src: sitk.Image) -> np.ndarray:
    key = id(src)
    if key not in _ARRAYS:
        _ARRAYS[key] = (src, sitk.GetArrayFromImage(src).astype(np.float32))
    return _ARRAYS[key][1]


def sample(src: sitk.Image, points: np.ndarray, linear: bool = True) -> np.ndarray:
    """``src`` (scalar image) sampled at LPS points (3, ...) from ``Participant.points``, trilinear (or nearest);
    float32 of the points' shape, 0 outside ``src``. The source voxels are cached per image object."""
    from scipy import ndimage

    arr = _voxels(src)
    direction = np.array(src.GetDirection()).reshape(3, 3)
    to_index = (np.linalg.inv(direction) / np.asarray(src.GetSpacing())[:, None])[::-1]  # rows z, y, x
    offset = -(to_index @ np.asarray(src.GetOrigin()))
    idx = (to_index.astype(np.float32) @ points.reshape(3, -1)) + offset.astype(np.float32)[:, None]
    out = ndimage.map_coordinates(arr, idx, order=1 if linear else 0, mode="constant", cval=0.0,
                                  output=np.float32, prefilter=False)
    return out.reshape(points.shape[1:])


def resample(src: sitk.Image, ref: sitk.Image, transform: sitk.Transform, linear: bool = True) -> np.ndarray:
    """``src`` pulled onto ``ref``'s grid through ``transform``; numpy (z, y, x) float32, 0 outside."""
    out = sitk.Resample(src, ref, transform, sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, 0.0,
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def grid(size: tuple[int, int, int], spacing: tuple[float, float, float], direction: np.ndarray,
         center: np.ndarray) -> sitk.Image:
    """An empty reference grid (x, y, z sizes; spacing mm; 3x3 direction, columns = axes in LPS) centred at
    ``center`` (LPS mm)."""
    img = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    img.SetSpacing([float(v) for v in spacing])
    img.SetDirection(np.asarray(direction, float).ravel().tolist())
    half = (np.asarray(size) - 1) / 2 * np.asarray(spacing)
    img.SetOrigin((np.asarray(center) - np.asarray(direction) @ half).tolist())
    return img
