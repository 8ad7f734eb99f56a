"""What a de-identification needs besides the dataset: site key, options, pseudonym and date-offset sources.

Built once per batch (or per upload) and passed to ``deidentify``; it is picklable so worker processes get it.
It holds the site's secret key: never print or log a context.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from incloud_kernel.deid.dates import DateOffsetSource, hmac_date_offset
from incloud_kernel.deid.options import SITE_DEFAULT, normalise
from incloud_kernel.deid.pseudonyms import PseudonymCallback, hmac_pseudonym
from incloud_kernel.deid.uids import UidMapper

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


@dataclass
class DeidContext:
    """``key``: site secret (bytes, from ``Site.secret_key()``); ``options``: names from ``options.OPTIONS``.

    ``pseudonym`` and ``date_offset`` default to keyed HMACs of the participant key; the registry supplies its
    own callbacks later. ``allow_burned_in`` passes instances that may carry burned-in text (else quarantined).
    """

    key: bytes
    options: tuple[str, ...] = SITE_DEFAULT
    pseudonym: PseudonymCallback | None = None
    date_offset: DateOffsetSource | None = None
    allow_burned_in: bool = False
    map_uid: UidMapper = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("a site key is required")
        self.options = normalise(tuple(self.options))
        self.pseudonym = self.pseudonym or hmac_pseudonym(self.key)
        self.date_offset = self.date_offset or hmac_date_offset(self.key)
        self.map_uid = UidMapper(self.key)

    def __repr__(self) -> str:  # never show the key
        return f"DeidContext(options={self.options!r}, allow_burned_in={self.allow_burned_in})"

    @classmethod
    def for_site(cls, site, options: list[str] | tuple[str, ...] | None = None,
                 allow_burned_in: bool | None = None, registry_project: str | int | None = None,
                 registry_study: Iterable[Dataset] | None = None) -> DeidContext:
        """The context of a ``Site``: its key, and its ``[deid]`` settings unless overridden.

        With ``registry_project``, persons registered and enrolled in that project get the registry's pseudonym
        and date shift (``acquisition.registry.deid_sources``); everyone else keeps the keyed HMAC defaults.
        ``registry_study`` (one study's original datasets) narrows the registry read to the persons it can match.
        """
        cfg = site.config.deid
        pseudonym = date_offset = None
        if registry_project is not None:
            from incloud_kernel.acquisition.registry import deid_sources

            pseudonym, date_offset = deid_sources(site, registry_project, registry_study)
        return cls(key=site.secret_key(), options=tuple(cfg.options if options is None else options),
                   allow_burned_in=cfg.allow_burned_in if allow_burned_in is None else allow_burned_in,
                   pseudonym=pseudonym, date_offset=date_offset)
