"""Feature extraction (issue 15): regional features per atlas region from T1w, BOLD and DWI series.

Modules: ``atlases`` (offline atlases from installed packages), ``rows`` (regional values and the long-format
feature table), ``t1``/``bold``/``dwi`` (scikit-learn-style extractors and their pipeline stages) and
``pipeline`` (the registered "features" pipeline). Importing this package must stay cheap: no heavy library
(nilearn, SimpleITK, dipy, scipy) is imported at module import, only inside functions.
"""
