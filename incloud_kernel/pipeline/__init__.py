"""Pipelines on Dask: versioned graphs of stages over archived series, with provenance, retries and progress.

``stage`` (the base of every stage), ``pipeline`` (graphs and the site's registry), ``runs`` (run and task state
in the database), ``provenance`` (what every derivative records), ``executor`` (LocalCluster or SLURMCluster).
Importing this package imports neither Dask nor any stage's libraries.
"""
from incloud_kernel.pipeline.pipeline import Pipeline, get, register
from incloud_kernel.pipeline.stage import JsonStage, Stage, StageInput

__all__ = ["Pipeline", "Stage", "StageInput", "JsonStage", "get", "register"]
