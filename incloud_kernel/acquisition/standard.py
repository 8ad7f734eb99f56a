"""The standard protocol sets INCloud ships: published parameters of two large harmonised studies, cited.

Values are copied from the studies' own protocol tables, never invented; what a table does not give stays out
(the standard set is then silent on it, and compliance checks do not compare it). Only Siemens protocols are
published in these tables; another vendor's equivalent is a project's custom set (``protocols.add_version``).

- ``ukb``: UK Biobank brain MRI, Alfaro-Almagro et al., NeuroImage 166:400-424 (2018), Table 1
  (Siemens Skyra 3T, 31 min).
- ``hcp-lifespan``: the HCP Lifespan-style 3T protocol as published for the P-HCP study, NeuroImage 241:118439
  (2021), Table 4 (Siemens Prisma 3T), which follows Harms et al., NeuroImage 183:972-984 (2018).

Units: times in ms, voxel sizes in mm, flip angle in degrees, b-values in s/mm2.
"""
from __future__ import annotations

from typing import Any

UKB = "Alfaro-Almagro et al., NeuroImage 166:400-424 (2018), Table 1"
PHCP = "P-HCP 3T protocol, NeuroImage 241:118439 (2021), Table 4"

#: key -> (name, BIDS suffix, vendor, source, parameters)
STANDARD: dict[str, tuple[str, str, str, str, dict[str, Any]]] = {
    "ukb-t1w": ("UK Biobank T1 3D MPRAGE", "T1w", "SIEMENS", UKB, {
        "sequence": "MPRAGE", "orientation": "sagittal", "repetition_time": 2000, "inversion_time": 880,
        "voxel_size": [1.0, 1.0, 1.0], "matrix": [208, 256, 256], "parallel_acceleration": 2,
        "duration_s": 294}),
    "ukb-flair": ("UK Biobank T2 FLAIR 3D SPACE", "FLAIR", "SIEMENS", UKB, {
        "sequence": "SPACE", "orientation": "sagittal", "repetition_time": 5000, "inversion_time": 1800,
        "voxel_size": [1.05, 1.0, 1.0], "matrix": [192, 256, 256], "parallel_acceleration": 2,
        "duration_s": 352}),
    "ukb-dwi": ("UK Biobank diffusion MRI", "dwi", "SIEMENS", UKB, {
        "sequence": "EPI", "repetition_time": 3600, "echo_time": [92], "voxel_size": [2.0, 2.0, 2.0],
        "matrix": [104, 104, 72], "multiband": 3, "b_values": [0, 1000, 2000], "directions": [5, 50, 50],
        "volumes": 105, "duration_s": 428}),
    "ukb-rest": ("UK Biobank resting-state fMRI", "bold", "SIEMENS", UKB, {
        "sequence": "EPI", "repetition_time": 735, "echo_time": [39], "flip_angle": 52,
        "voxel_size": [2.4, 2.4, 2.4], "matrix": [88, 88, 64], "multiband": 8, "volumes": 490,
        "duration_s": 370}),
    "hcp-t1w": ("HCP Lifespan T1w multi-echo MPRAGE", "T1w", "SIEMENS", PHCP, {
        "sequence": "MPRAGE", "orientation": "sagittal", "repetition_time": 2500,
        "echo_time": [1.81, 3.6, 5.39, 7.18], "flip_angle": 8, "voxel_size": [0.8, 0.8, 0.8],
        "matrix": [300, 320], "slices": 208, "parallel_acceleration": 2, "duration_s": 502}),
    "hcp-t2w": ("HCP Lifespan T2w SPACE", "T2w", "SIEMENS", PHCP, {
        "sequence": "SPACE", "orientation": "sagittal", "repetition_time": 3200, "echo_time": [564],
        "voxel_size": [0.8, 0.8, 0.8], "matrix": [300, 320], "slices": 208, "parallel_acceleration": 2,
        "duration_s": 395}),
    "hcp-rest": ("HCP Lifespan resting-state fMRI", "bold", "SIEMENS", PHCP, {
        "sequence": "EPI", "orientation": "axial", "repetition_time": 800, "echo_time": [37], "flip_angle": 52,
        "voxel_size": [2.0, 2.0, 2.0], "matrix": [104, 104], "slices": 72, "multiband": 8, "duration_s": 401}),
    "hcp-dwi": ("HCP Lifespan diffusion MRI (dir98)", "dwi", "SIEMENS", PHCP, {
        "sequence": "EPI", "orientation": "axial", "repetition_time": 3230, "echo_time": [89.2], "flip_angle": 78,
        "voxel_size": [1.5, 1.5, 1.5], "matrix": [140, 140], "slices": 92, "multiband": 4, "duration_s": 338}),
}

#: One-key standard sets: what a booking with that key acquires, in order.
SETS: dict[str, tuple[str, ...]] = {
    "ukb": ("ukb-t1w", "ukb-flair", "ukb-dwi", "ukb-rest"),
    "hcp-lifespan": ("hcp-t1w", "hcp-t2w", "hcp-rest", "hcp-dwi"),
}
