"""Write synthetic series to disk as DICOM Part 10 files: one file per instance, one folder per series.

Classic single-frame MR (and one secondary capture), or one Enhanced MR multi-frame file per series
(``write_multiframe``), in explicit VR little endian, or in lossless JPEG 2000 /
JPEG-LS through pydicom's pixel encoders (pylibjpeg-openjpeg, pyjpegls). Pixel geometry is explicit: the caller
passes LPS ImagePositionPatient per slice and the ImageOrientationPatient of the series.

Speed: a series' shared header is encoded once with pydicom; each instance then only encodes what differs
(UIDs, numbers, positions, times, pixel data) with a small explicit-VR-little-endian encoder for the common
VRs (pydicom for anything else), with a cache for values repeated between instances, and writes header bytes
and pixels with one system call through ``dicom.part10`` (the Part 10 writer shared with ``deid``). Files are
written whole, under the series folder given; this module must never log a header value.
"""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import format_number_as_ds

from incloud_kernel.dicom import part10

if TYPE_CHECKING:
    import SimpleITK as sitk

#: Transfer syntaxes the writer can produce.
EXPLICIT_LE = str(ExplicitVRLittleEndian)
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
TRANSFER_SYNTAXES = (EXPLICIT_LE, JPEG2000_LOSSLESS, JPEGLS_LOSSLESS)
IMPLEMENTATION_VERSION = "INCLOUD_SYNTH"

#: Text VRs whose values are plain ASCII (encoded here without pydicom); UI pads with NUL, the others with space.
_ASCII_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}
#: Binary numeric VRs: struct format character per value.
_NUMERIC_VRS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


@dataclass
class Instance:
    """One slice: pixel values (rows, columns) and the attributes that differ between instances."""

    pixels: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


def _text(vr: str, value: Any) -> str:
    if vr == "DS" and not isinstance(value, str):
        s = repr(float(value))
        return s if len(s) <= 16 else format_number_as_ds(float(value))
    if vr == "IS" and not isinstance(value, str):
        return str(int(value))
    return str(value)


def _pydicom_element(keyword: str, value: Any) -> bytes:
    ds = Dataset()
    setattr(ds, keyword, value)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, ds[keyword])
    return fp.getvalue()


@functools.lru_cache(maxsize=None)
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword}")
    return tag, dictionary_VR(tag)


def encode_attribute(keyword: str, value: Any) -> tuple[int, bytes]:
    """(tag, encoded element) of one top-level attribute, explicit VR little endian.

    ASCII text and binary numeric VRs are encoded directly (same bytes as pydicom writes); anything else
    (person names, sequences, other character sets) goes through pydicom.
    """
    tag, vr = _tag_vr(keyword)
    values = value if isinstance(value, (list, tuple)) else [value]
    if vr in _ASCII_VRS and value is not None:
        if isinstance(value, str):
            raw = value.encode("ascii")
        else:
            raw = "\\".join(_text(vr, v) for v in values).encode("ascii")
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
        return tag, part10.element_bytes(tag, vr, raw)
    if vr in _NUMERIC_VRS and value is not None:
        raw = struct.pack(f"<{len(values)}{_NUMERIC_VRS[vr]}", *values)
        return tag, part10.element_bytes(tag, vr, raw)
    return tag, _pydicom_element(keyword, value)


class _Encoder:
    """Per-series cache of encoded attributes: positions, orientations and b-values repeat between instances."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, Any], tuple[int, bytes]] = {}

    def __call__(self, keyword: str, value: Any) -> tuple[int, bytes]:
        key = (keyword, tuple(value) if isinstance(value, list) else value)
        try:
            hit = self.cache.get(key)
        except TypeError:  # unhashable (a Sequence): encode every time
            return encode_attribute(keyword, value)
        if hit is None:
            hit = self.cache[key] = encode_attribute(keyword, value)
        return hit


def _encode_dataset(ds: Dataset) -> dict[int, bytes]:
    """Each top-level element of ``ds`` encoded once (explicit VR little endian), keyed by tag."""
    out: dict[int, bytes] = {}
    for elem in ds:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, elem)
        out[int(elem.tag)] = fp.getvalue()
    return out


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1) of a synthetic instance."""
    return part10.file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, str(PYDICOM_IMPLEMENTATION_UID),
                            IMPLEMENTATION_VERSION)


def pixel_module(pixels: Iterable[np.ndarray]) -> Dataset:
    """Image Pixel module attributes for a series of frames: uint8 -> 8 bits; otherwise uint16 with
    BitsStored 12 unless a value in the series exceeds 4095 (then 16); RGB when frames are (rows, cols, 3)."""
    frames = list(pixels)
    first = frames[0]
    ds = Dataset()
    ds.Rows, ds.Columns = int(first.shape[0]), int(first.shape[1])
    if first.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    if first.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        peak = max(int(np.max(f, initial=0)) for f in frames)
        bits = 12 if peak <= 4095 else 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    return ds


def pixel_data_element(frames: list[np.ndarray], pix: Dataset, transfer_syntax: str) -> bytes:
    """The encoded (7FE0,0010) element of one or more frames: native OW/OB, or encapsulated (one fragment
    per frame, empty basic offset table replaced by pydicom's) for the lossless codecs."""
    if transfer_syntax == EXPLICIT_LE:
        dtype = np.uint8 if pix.BitsAllocated == 8 else np.uint16
        raw = b"".join(np.ascontiguousarray(f, dtype=dtype).tobytes() for f in frames)
        if len(raw) % 2:
            raw += b"\0"
        return part10.element_bytes(0x7FE00010, "OB" if pix.BitsAllocated == 8 else "OW", raw)
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_encoder

    encoder = get_encoder(transfer_syntax)
    encoded = []
    for f in frames:
        arr = np.ascontiguousarray(f, dtype=np.uint8 if pix.BitsAllocated == 8 else np.uint16)
        encoded.append(encoder.encode(arr, rows=pix.Rows, columns=pix.Columns, samples_per_pixel=pix.SamplesPerPixel,
                                      bits_allocated=pix.BitsAllocated, bits_stored=pix.BitsStored,
                                      pixel_representation=0, photometric_interpretation=pix.PhotometricInterpretation,
                                      number_of_frames=1))
    return part10.header(0x7FE00010, "OB", part10.UNDEFINED_LENGTH) + encapsulate(encoded) + part10.SEQUENCE_DELIMITER


def _plan(shared: dict[int, bytes], own: dict[int, bytes]) -> list[bytes | int]:
    """Element order of an instance: runs of shared elements pre-joined (bytes) between the tags (int) that
    each instance encodes itself; tags ascending as PS3.5 7.1 requires."""
    plan: list[bytes | int] = []
    run: list[bytes] = []
    for tag in sorted(shared.keys() | own.keys()):
        if tag in own:
            if run:
                plan.append(b"".join(run))
                run = []
            plan.append(tag)
        else:
            run.append(shared[tag])
    if run:
        plan.append(b"".join(run))
    return plan


def write_series(folder: Path, base: Dataset, instances: Iterable[Instance], *, sop_class_uid: str,
                 instance_uids: list[str], transfer_syntax: str = EXPLICIT_LE,
                 reference: tuple[str, str] | None = None) -> list[Path]:
    """Write each instance as ``folder/IM00001.dcm``... and return the paths.

    ``base`` holds everything shared by the series (encoded once; per-instance keys must not be in it); each
    instance adds its own attributes and pixels (uint16 -> BitsStored 12 unless a value of the series exceeds
    4095; uint8 -> 8 bits). ``reference`` (SOP class, SOP instance UID) goes in every instance's
    ReferencedImageSequence, so instances point at one another as a scanner's do. Raises ``ValueError`` for an
    unknown transfer syntax or keyword.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    instances = list(instances)
    folder.mkdir(parents=True, exist_ok=True)
    shared_ds = Dataset()
    shared_ds.update(base)
    shared_ds.SOPClassUID = sop_class_uid
    if reference is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = reference[0]
        item.ReferencedSOPInstanceUID = reference[1]
        shared_ds.ReferencedImageSequence = Sequence([item])
    pix = pixel_module(inst.pixels for inst in instances)
    shared_ds.update(pix)
    shared = _encode_dataset(shared_ds)
    encode = _Encoder()
    plans: dict[tuple[int, ...], list[bytes | int]] = {}
    paths: list[Path] = []
    native = transfer_syntax == EXPLICIT_LE
    dtype = np.uint8 if pix.BitsAllocated == 8 else np.uint16
    pixel_vr = "OB" if pix.BitsAllocated == 8 else "OW"
    for number, (inst, uid) in enumerate(zip(instances, instance_uids), start=1):
        own = dict([encode_attribute("SOPInstanceUID", uid), encode("InstanceNumber", number)])
        for key, value in inst.attrs.items():
            tag, raw = encode(key, value)
            own[tag] = raw
        pixels: Any = None
        if native:  # the element header here, the pixels written from the array itself (no copy)
            pixels = np.ascontiguousarray(inst.pixels, dtype=dtype)
            odd = pixels.nbytes % 2
            own[0x7FE00010] = part10.header(0x7FE00010, pixel_vr, pixels.nbytes + odd)
        else:
            own[0x7FE00010] = pixel_data_element([inst.pixels], pix, transfer_syntax)
        plan = plans.get(tuple(own))
        if plan is None:
            plan = plans[tuple(own)] = _plan(shared, own)
        run: list[bytes] = [file_meta_bytes(sop_class_uid, uid, transfer_syntax)]
        buffers: list[Any] = []
        for p in plan:
            run.append(p if isinstance(p, bytes) else own[p])
            if native and p == 0x7FE00010:
                buffers += [b"".join(run), memoryview(pixels).cast("B")]
                run = [b"\0"] if odd else []
        if run:
            buffers.append(b"".join(run))
        path = folder / f"IM{number:05d}.dcm"
        part10.write_file(path, buffers, mode=0o644)
        paths.append(path)
    return paths


def geometry(img: "sitk.Image") -> tuple[list[float], list[float], list[list[float]], float]:
    """DICOM plane geometry of a SimpleITK volume: (ImageOrientationPatient, PixelSpacing, per-slice
    ImagePositionPatient, slice normal unit vector dotted positions are SliceLocation)."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    sx, sy, sz = img.GetSpacing()
    origin = np.asarray(img.GetOrigin())
    iop = [round(float(v), 6) for v in (*d[:, 0], *d[:, 1])]
    positions = [[round(float(v), 4) for v in origin + d[:, 2] * sz * k] for k in range(img.GetSize()[2])]
    return iop, [float(sy), float(sx)], positions, float(sz)


def volume_instances(img: "sitk.Image", pixels: np.ndarray | None = None) -> list[Instance]:
    """One ``Instance`` per slice of ``img`` (or of ``pixels``, numpy z, y, x on img's grid) with its
    ImagePositionPatient, ImageOrientationPatient, PixelSpacing and SliceLocation."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(img) if pixels is None else pixels
    iop, spacing, positions, _ = geometry(img)
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    out = []
    for k, ipp in enumerate(positions):
        out.append(Instance(np.asarray(arr[k]), {
            "ImagePositionPatient": ipp,
            "ImageOrientationPatient": iop,
            "PixelSpacing": spacing,
            "SliceLocation": f"{float(np.dot(normal, ipp)):.4f}",
        }))
    return out


def write_multiframe(path: Path, base: Dataset, frames: np.ndarray, *, sop_class_uid: str, instance_uid: str,
                     shared_groups: Dataset, per_frame_groups: list[Dataset], transfer_syntax: str = EXPLICIT_LE,
                     reference: tuple[str, str] | None = None) -> Path:
    """Write one multi-frame instance (Enhanced MR): ``frames`` (n, rows, columns) in the order of
    ``per_frame_groups`` (one functional-group item per frame), ``shared_groups`` the Shared Functional Groups
    item. Header encoded by pydicom, pixel data and file meta as in ``write_series``. Returns ``path``."""
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    if len(per_frame_groups) != len(frames):
        raise ValueError("one per-frame functional group item per frame")
    ds = Dataset()
    ds.update(base)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = instance_uid
    ds.InstanceNumber = 1
    if reference is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = reference[0]
        item.ReferencedSOPInstanceUID = reference[1]
        ds.ReferencedImageSequence = Sequence([item])
    frame_list = list(frames)
    pix = pixel_module(frame_list)
    ds.update(pix)
    ds.NumberOfFrames = len(frame_list)
    ds.SharedFunctionalGroupsSequence = Sequence([shared_groups])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame_groups)
    encoded = _encode_dataset(ds)
    encoded[0x7FE00010] = pixel_data_element(frame_list, pix, transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    part10.write_file(path, [file_meta_bytes(sop_class_uid, instance_uid, transfer_syntax)]
                      + [encoded[t] for t in sorted(encoded)])
    return path
