"""Scanner sites of a synthetic cohort: equipment identity and the image differences harmonisation must undo.

A site fixes the manufacturer, model, field strength and station values written to headers, and the image
effects applied to every series from it: a smooth multiplicative bias field (intensity non-uniformity),
a noise level and a contrast curve. Site names, addresses and serial numbers are invented; this module
must never hold a real institution's data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SCANNERS = [
    ("SIEMENS", "Prisma_fit", 3.0, "syngo MR E11"),
    ("GE MEDICAL SYSTEMS", "SIGNA Premier", 3.0, "MR30.1_R01"),
    ("Philips Medical Systems", "Ingenia", 1.5, "5.7.1"),
    ("Canon Medical Systems", "Vantage Orian", 1.5, "V6.0"),
]
HOSPITALS = ["St. Aldric Memorial Hospital", "Northgate University Clinic", "Clinica San Teodoro",
             "Riverside Neurology Centre", "Hopital Sainte-Ysolde", "Kestrel Valley Medical Center"]


@dataclass
class Site:
    """One scanner site.

    ``bias`` holds the coefficients of a quadratic intensity non-uniformity over the field of view
    (normalised coordinates in [-1, 1]); ``noise`` is the Gaussian noise standard deviation as a fraction of
    the mean brain intensity; ``gamma`` is the exponent of the contrast curve applied to normalised
    intensities; ``compress`` is the transfer syntax this site's PACS uses for a share of its series
    (``None``: explicit VR little endian only).
    """

    index: int
    manufacturer: str
    model: str
    field_strength: float
    software_version: str
    institution_name: str
    institution_address: str
    department: str
    station_name: str
    device_serial: str
    bias: list[float]
    noise: float
    gamma: float
    compress: str | None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def strings(self) -> list[str]:
        """Identifying equipment and institution values planted in headers (for leak checks)."""
        return [self.institution_name, self.institution_address, self.department, self.station_name,
                self.device_serial]

    def bias_field(self, shape: tuple[int, ...]) -> np.ndarray:
        """The multiplicative non-uniformity on a voxel grid of ``shape`` (first three axes), mean about 1."""
        axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape[:3]]
        x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
        b = self.bias
        field = 1.0 + b[0] * x + b[1] * y + b[2] * z + b[3] * x * x + b[4] * y * z + b[5] * z * z
        return np.clip(field, 0.5, 1.5).astype(np.float32)


def make_sites(count: int, seed: int) -> list[Site]:
    """``count`` distinct sites, deterministic for ``seed``; site 0 is the cleanest (lowest noise, no bias)."""
    rng = np.random.default_rng([seed, 7001])
    sites = []
    for i in range(count):
        manufacturer, model, tesla, software = SCANNERS[i % len(SCANNERS)]
        hospital = HOSPITALS[i % len(HOSPITALS)] + ("" if i < len(HOSPITALS) else f" {i}")
        bias = [0.0] * 6 if i == 0 else [float(v) for v in rng.uniform(-0.12, 0.12, 6)]
        sites.append(Site(
            index=i,
            manufacturer=manufacturer,
            model=model,
            field_strength=tesla,
            software_version=software,
            institution_name=hospital,
            institution_address=f"{rng.integers(1, 999)} Hospital Road, {['Oakdale', 'Riverton', 'Fairhaven'][i % 3]}",
            department="Neuroradiology",
            station_name=f"MRC{rng.integers(10000, 99999)}",
            device_serial=f"{rng.integers(10**5, 10**6)}",
            bias=bias,
            noise=0.015 if i == 0 else float(rng.uniform(0.02, 0.05)),
            gamma=1.0 if i == 0 else float(rng.uniform(0.8, 1.25)),
            compress=[None, "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"][i % 3],
        ))
    return sites
