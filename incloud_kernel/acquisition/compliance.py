"""Protocol compliance at ingest: a series bound to a booking is compared with the protocol version it booked.

The acquired values come from what ingest already has for the series (the dcm2niix sidecar, which dcm2niix
reads from the DICOM headers, the converted image's shape and voxel size, the ``.bval`` file) and are put in the
protocol library's units (``protocols.PARAMETERS``: ms, mm, degrees, s/mm2). Each booked parameter is compared
within its tolerance (``protocols.TOLERANCES``). The verdict is one ``ProtocolCheck`` row per series:
``compliant``, or ``deviation`` listing each difference as {parameter, booked, acquired}, which also puts a QC
caveat on the series through the QC gate (``qc.gate.flag``: the one place QC decisions live).

A booked value the headers do not give is *unverified*, never a deviation; a parameter the protocol leaves out
is not compared. Never: a header value other than these acquisition parameters in a verdict, a reason or a log.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session as DB

from incloud_kernel.acquisition.protocols import TOLERANCES
from incloud_kernel.archive.models import Booking, Protocol, ProtocolCheck, Series
from incloud_kernel.archive.permissions import SYSTEM, Action, Actor, require
from incloud_kernel.archive.projects import audit

#: Parameters compared as one number each.
_SCALARS = ("repetition_time", "inversion_time", "flip_angle", "slices", "multiband", "parallel_acceleration",
            "volumes")
#: How many characters of the deviation list fit in the QC caveat's reason (``qc_review.reason``).
_REASON_LIMIT = 500


@dataclass
class Comparison:
    """The differences of one series from one protocol version."""

    deviations: list[dict[str, Any]] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "deviation" if self.deviations else "compliant"


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _ms(value: Any) -> float | None:
    """A dcm2niix time (seconds) in ms, rounded to what a scanner stores (0.001 ms)."""
    seconds = _number(value)
    return None if seconds is None else round(seconds * 1000.0, 3)


def read_bvals(path: str | Path | None) -> list[float] | None:
    """The b-values of a dcm2niix ``.bval`` file (one line of numbers); None without a readable file."""
    if path is None:
        return None
    try:
        values = [_number(v) for v in Path(path).read_text().split()]
    except OSError:
        return None
    return [v for v in values if v is not None] or None


def header_facts(ds: Any) -> dict[str, int]:
    """The image geometry a protocol states, from an original DICOM header: Rows, Columns and, for a
    multi-frame instance, NumberOfFrames (numbers only; nothing else of the header is read)."""
    out: dict[str, int] = {}
    for keyword in ("Rows", "Columns", "NumberOfFrames"):
        try:
            value = int(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            out[keyword] = value
    return out


def acquired_parameters(sidecar: Mapping[str, Any], params: Mapping[str, Any],
                        bvals: Sequence[float] | None = None,
                        header: Mapping[str, int] | None = None) -> dict[str, Any]:
    """What the scanner acquired, in protocol units, from the sidecar (times, flip angle, acceleration), the
    recorded series ``params`` (VoxelSize of the converted image, Volumes, Instances), the b-values and the
    original header's geometry (``header_facts``). A value the sources lack is left out.

    The matrix is the image's (Rows x Columns, plus the slices for a 3-value matrix): a protocol states what
    its images are. Slices are the instances (or frames) per volume; the converted image's axes are not used,
    as dcm2niix may store a sagittal stack with its slices on any axis."""
    out: dict[str, Any] = {}
    for name, key in (("repetition_time", "RepetitionTime"), ("inversion_time", "InversionTime")):
        value = _ms(sidecar.get(key))
        if value is not None:
            out[name] = value
    echo = _ms(sidecar.get("EchoTime"))
    if echo is not None:
        out["echo_time"] = [echo]
    for name, key in (("flip_angle", "FlipAngle"), ("multiband", "MultibandAccelerationFactor"),
                      ("parallel_acceleration", "ParallelReductionFactorInPlane")):
        value = _number(sidecar.get(key))
        if value is not None:
            out[name] = value
    volumes = params.get("Volumes")
    if volumes is not None:
        out["volumes"] = int(volumes)
    header = header or {}
    images = header.get("NumberOfFrames") if header.get("NumberOfFrames", 1) > 1 else params.get("Instances")
    if images and volumes and int(images) % int(volumes) == 0:
        out["slices"] = int(images) // int(volumes)
    if header.get("Rows") and header.get("Columns"):
        out["matrix"] = [header["Rows"], header["Columns"]] + ([out["slices"]] if "slices" in out else [])
    voxel = params.get("VoxelSize")
    if isinstance(voxel, (list, tuple)) and len(voxel) >= 3:
        out["voxel_size"] = [round(float(v), 4) for v in voxel[:3]]
    if bvals:
        out["b_values"] = [float(b) for b in bvals]  # every volume's; grouped when compared
    return out


def allowed(name: str, booked: float, tolerances: Mapping[str, tuple[float, float]] = TOLERANCES) -> float:
    """The largest difference from ``booked`` that still complies for parameter ``name``."""
    absolute, relative = tolerances[name]
    return max(absolute, relative * abs(booked))


def _within(name: str, booked: float, acquired: float, tolerances: Mapping[str, tuple[float, float]]) -> bool:
    # A hair of slack for values that went through binary floating point (2.3 s -> 2300.0000000000005 ms).
    return abs(acquired - booked) <= allowed(name, booked, tolerances) + 1e-9


def _shell_groups(bvals: Sequence[float], tolerances: Mapping[str, tuple[float, float]]
                  ) -> list[tuple[float, int]]:
    """Acquired b-values grouped into shells (values within the tolerance of the shell's lowest): each shell's
    median, rounded, and its number of volumes, lowest shell first."""
    shells: list[list[float]] = []
    for value in sorted(bvals):
        if shells and _within("b_values", shells[-1][0], value, tolerances):
            shells[-1].append(value)
        else:
            shells.append([value])
    out = []
    for shell in shells:
        mid = sorted(shell)[len(shell) // 2]
        out.append((float(round(mid)), len(shell)))
    return out


def compare(booked: Mapping[str, Any], acquired: Mapping[str, Any],
            tolerances: Mapping[str, tuple[float, float]] = TOLERANCES) -> Comparison:
    """Each booked parameter with a tolerance against the acquired value: a deviation lists (parameter, booked,
    acquired); a booked parameter without an acquired value is unverified. Lists of sizes (voxel size, matrix)
    are compared as sorted values, so the axes' order (read, phase, slice) does not matter; a 2-value matrix is
    the in-plane one (the acquired matrix's first two values). Every acquired echo time must be one of the booked echo times."""
    result = Comparison()

    def deviate(name: str, want: Any, got: Any) -> None:
        result.deviations.append({"parameter": name, "booked": want, "acquired": got})

    for name in _SCALARS:
        if name not in booked:
            continue
        if acquired.get(name) is None:
            result.unverified.append(name)
        elif not _within(name, float(booked[name]), float(acquired[name]), tolerances):
            deviate(name, booked[name], acquired[name])
    if "echo_time" in booked:
        got = acquired.get("echo_time")
        if not got:
            result.unverified.append("echo_time")
        elif not all(any(_within("echo_time", float(b), float(a), tolerances) for b in booked["echo_time"])
                     for a in got):
            deviate("echo_time", list(booked["echo_time"]), list(got))
    for name in ("voxel_size", "matrix"):
        if name not in booked:
            continue
        got = acquired.get(name)
        want = list(booked[name])
        if not got or len(got) < len(want):
            result.unverified.append(name)
            continue
        got = list(got[:len(want)])
        if not all(_within(name, float(b), float(a), tolerances) for b, a in zip(sorted(want), sorted(got))):
            deviate(name, want, got)
    if "b_values" in booked:
        got = acquired.get("b_values")
        if not got:
            result.unverified += ["b_values", "directions"]
        else:
            pairs = sorted(zip((float(b) for b in booked["b_values"]), booked.get("directions", [])))
            shells = _shell_groups(got, tolerances)
            if len(shells) != len(pairs) or not all(_within("b_values", b, s, tolerances)
                                                    for (b, _), (s, _) in zip(pairs, shells)):
                deviate("b_values", [b for b, _ in pairs], [s for s, _ in shells])
            elif [n for _, n in pairs] != [n for _, n in shells]:
                deviate("directions", [n for _, n in pairs], [n for _, n in shells])
    return result


def best_match(protocols: Iterable[Protocol], suffix: str, acquired: Mapping[str, Any]
               ) -> tuple[Protocol, Comparison] | None:
    """The booked protocol version a series of BIDS ``suffix`` was acquired with: of those with that suffix, the
    one it deviates from least (the first booked on a tie); None when no booked protocol has the suffix."""
    best: tuple[Protocol, Comparison] | None = None
    for row in protocols:
        if row.suffix != suffix:
            continue
        result = compare(row.params, acquired)
        if best is None or len(result.deviations) < len(best[1].deviations):
            best = (row, result)
    return best


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def describe(deviations: Sequence[Mapping[str, Any]]) -> str:
    """One line listing each difference: ``repetition_time booked 2300 acquired 2500; ...``."""
    return "; ".join(f"{d['parameter']} booked {_show(d['booked'])} acquired {_show(d['acquired'])}"
                     for d in deviations)


def check_series(db: DB, booking: Booking, series: Series, acquired: Mapping[str, Any]) -> ProtocolCheck:
    """Compare an archived series with its booking's protocol versions and record the verdict (replacing an
    earlier one of the same series, e.g. after late instances were merged). A deviation puts a QC caveat on the
    series listing every difference. Internal: the ingest chain calls it inside its archive transaction."""
    from incloud_kernel.qc import gate

    protocols = [p for p in (db.get(Protocol, int(pid)) for pid in booking.protocol_ids or []) if p is not None]
    match = best_match(protocols, series.suffix, acquired)
    row = db.scalar(select(ProtocolCheck).where(ProtocolCheck.series_id == series.id))
    if row is None:
        row = ProtocolCheck(series_id=series.id, project_id=series.project_id)
        db.add(row)
    row.booking_id = booking.id
    if match is None:
        row.protocol_id, row.verdict, row.deviations, row.unverified = None, "not_booked", [], []
    else:
        protocol, result = match
        row.protocol_id, row.verdict = protocol.id, result.verdict
        row.deviations, row.unverified = result.deviations, result.unverified
        if result.deviations:
            reason = f"protocol deviation from {protocol.key} v{protocol.version}: {describe(result.deviations)}"
            gate.flag(db, series, reason[:_REASON_LIMIT], reviewer=gate.PROTOCOL_REVIEWER)
    db.flush()
    audit(db, SYSTEM, "acquisition.compliance", "series", series.id, booking=booking.id, verdict=row.verdict,
          protocol=row.protocol_id, parameters=[d["parameter"] for d in row.deviations])
    return row


def as_dict(db: DB, row: ProtocolCheck) -> dict[str, Any]:
    """What the API and CLI show of a verdict."""
    protocol = db.get(Protocol, row.protocol_id) if row.protocol_id else None
    return {"series": row.series_id, "booking": row.booking_id, "verdict": row.verdict,
            "protocol": None if protocol is None else {"key": protocol.key, "version": protocol.version},
            "deviations": list(row.deviations or []), "unverified": list(row.unverified or []),
            "checked_at": row.checked_at.isoformat() if row.checked_at else None}


def verdicts(db: DB, actor: Actor, project: int | str, *, booking: int | None = None) -> list[dict[str, Any]]:
    """The compliance verdicts of a project's series (its readers), optionally of one booking, by series."""
    target = require(db, actor, project, Action.read)
    query = select(ProtocolCheck).where(ProtocolCheck.project_id == target.id)
    if booking is not None:
        query = query.where(ProtocolCheck.booking_id == booking)
    return [as_dict(db, r) for r in db.scalars(query.order_by(ProtocolCheck.series_id))]


__all__ = ["Comparison", "header_facts", "acquired_parameters", "read_bvals", "allowed", "compare", "best_match", "describe",
           "check_series", "verdicts", "as_dict"]
