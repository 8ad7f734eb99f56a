"""Write synthetic series to disk as DICOM Part 10 files: one file per instance, one folder per series.

Classic single-frame MR (and one secondary capture) in explicit VR little endian, or in lossless JPEG 2000 /
JPEG-LS through pydicom's pixel encoders (pylibjpeg-openjpeg, pyjpegls). Pixel geometry is explicit: the caller
passes LPS ImagePositionPatient per slice and the ImageOrientationPatient of the series. Files are written
whole, under the series folder given; this module must never log a header value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

if TYPE_CHECKING:
    import SimpleITK as sitk

#: Transfer syntaxes the writer can produce.
EXPLICIT_LE = str(ExplicitVRLittleEndian)
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
TRANSFER_SYNTAXES = (EXPLICIT_LE, JPEG2000_LOSSLESS, JPEGLS_LOSSLESS)


@dataclass
class Instance:
    """One slice: pixel values (rows, columns) and the attributes that differ between instances."""

    pixels: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


def _encode(ds: Dataset) -> dict[int, bytes]:
    """Each top-level element of ``ds`` encoded once (explicit VR little endian), keyed by tag."""
    out: dict[int, bytes] = {}
    for elem in ds:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, elem)
        out[int(elem.tag)] = fp.getvalue()
    return out


def write_series(folder: Path, base: Dataset, instances: Iterable[Instance], *, sop_class_uid: str,
                 instance_uids: list[str], transfer_syntax: str = EXPLICIT_LE,
                 reference: tuple[str, str] | None = None) -> list[Path]:
    """Write each instance as ``folder/IM00001.dcm``... and return the paths.

    ``base`` holds everything shared by the series (encoded once; per-instance keys must not be in it); each
    instance adds its own attributes and pixels (uint16 -> BitsStored 12 unless a value exceeds 4095; uint8 ->
    8 bits). ``reference`` (SOP class, SOP instance UID) goes in every instance's ReferencedImageSequence, so
    instances point at one another as a scanner's do. Raises ``ValueError`` for an unknown transfer syntax.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    folder.mkdir(parents=True, exist_ok=True)
    shared = _encode(base)
    paths: list[Path] = []
    for number, (inst, uid) in enumerate(zip(instances, instance_uids), start=1):
        ds = Dataset()
        ds.SOPClassUID = sop_class_uid
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = number
        if reference is not None:
            item = Dataset()
            item.ReferencedSOPClassUID = reference[0]
            item.ReferencedSOPInstanceUID = reference[1]
            ds.ReferencedImageSequence = Sequence([item])
        for key, value in inst.attrs.items():
            setattr(ds, key, value)
        _set_pixels(ds, inst.pixels, transfer_syntax)
        own = _encode(ds)
        merged = {**shared, **own}
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class_uid
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = transfer_syntax
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "INCLOUD_SYNTH"
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        body = b"".join(merged[tag] for tag in sorted(merged))
        path = folder / f"IM{number:05d}.dcm"
        path.write_bytes(fp.getvalue() + body)
        paths.append(path)
    return paths


def _set_pixels(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    arr = np.ascontiguousarray(pixels)
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    if arr.ndim == 3:  # RGB
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    if arr.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        arr = arr.astype(np.uint16)
        bits = 12 if int(arr.max(initial=0)) <= 4095 else 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    if transfer_syntax == EXPLICIT_LE:
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OB" if arr.dtype == np.uint8 else "OW"
    else:
        from pydicom.encaps import encapsulate
        from pydicom.pixels import get_encoder

        frame = get_encoder(transfer_syntax).encode(arr, rows=ds.Rows, columns=ds.Columns,
                                                    samples_per_pixel=ds.SamplesPerPixel,
                                                    bits_allocated=ds.BitsAllocated, bits_stored=ds.BitsStored,
                                                    pixel_representation=0,
                                                    photometric_interpretation=ds.PhotometricInterpretation,
                                                    number_of_frames=1)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True


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
