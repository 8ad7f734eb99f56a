"""Defacing by refacing: replace the face and ears of a head scan with a population-average face.

The public entry points are :class:`incloud_kernel.deface.reface.Refacer` / :func:`reface_image` for NIfTI
(nibabel images or paths) and :mod:`incloud_kernel.deface.dicom` for DICOM series. Voxels of the protected
brain region are never modified; a scan whose face cannot be replaced reliably is quarantined, never passed on.
"""
