"""The participant registry: who a participant is, sealed; one internal id per person; a pseudonym per project.

A registrar registers a person's identity (names, birth date, sex, hospital record number, contact). It is
stored only as one AES-GCM ciphertext (``keyring``: the key is never in the database) plus keyed HMAC blind
indexes for exact look-ups (record number; names + birth date) and for blocking (birth year; Soundex of the
family name). A registration that resembles a registered person (``matching``: EpiLink weights on the
candidates of its blocks, decrypted in memory only) is held until the registrar decides: the same person
(``same_as``: merged, the variant found next time) or another one (``keep_apart``: recorded, not asked again).
Each person has one stable internal id (``uid``); in each project it is known by a pseudonym, an HMAC of the uid
with that project's domain key (as gPAS domains), which labels the archive participant, so two projects'
data cannot be joined without the registrar. De-identification takes pseudonyms and date shifts from here
(``deid_sources``).

Rules this module keeps: only registrars (``permissions.is_registrar``) read identities, and every read is an
audit event with who, when and why (a reason that may not contain the identity); no identity value is ever
logged, put into an exception, an audit event or any column in clear. Research attributes are the archive
participant's (pseudonymous; project members edit them through ``records``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterable, Mapping

from pydicom import Dataset
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session as DB, object_session

from incloud_kernel.acquisition import keyring, matching
from incloud_kernel.archive import records
from incloud_kernel.archive.models import (
    Participant,
    Project,
    RegistryDecision,
    RegistryEnrolment,
    RegistryIndex,
    RegistryMeta,
    RegistryPerson,
    Session,
)
from incloud_kernel.archive.permissions import SYSTEM, Action, Actor, get_participant, require, require_registrar
from incloud_kernel.archive.projects import audit
from incloud_kernel.deid.dates import MAX_SHIFT_DAYS, MIN_SHIFT_DAYS, HmacDateOffset
from incloud_kernel.deid.pseudonyms import HmacPseudonym
from incloud_kernel.errors import IncloudError, NotFound, ValidationError

IDENTITY_FIELDS = ("family_name", "given_names", "birth_date", "sex", "record_number", "contact")
SEXES = ("M", "F", "O", "U")
_UID = re.compile(r"^P[A-Z2-7]{16}$")
EXACT_KINDS = ("mrn", "name_dob")


class DuplicateSuspected(IncloudError):
    """A registration resembles registered persons; the registrar must decide (``same_as`` or ``keep_apart``).

    The message and ``candidates`` carry internal ids and scores only."""

    exit_code = 5

    def __init__(self, candidates: list[tuple[str, float]]) -> None:
        self.candidates = candidates
        listed = ", ".join(f"{uid} (score {s:.2f})" for uid, s in candidates)
        super().__init__(f"possible duplicate of {listed}: decide with same_as=UID (--same-as) or keep_apart "
                         f"(--keep-apart)")


# -- identities ---------------------------------------------------------------------------------------------------

def _line(value: Any, name: str, limit: int, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise ValidationError(f"a registry record needs {name.replace('_', ' ')}")
        return ""
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError(f"{name.replace('_', ' ')} must be one line of at most {limit} characters")
    return " ".join(value.split())


def check_identity(data: Mapping[str, Any]) -> dict[str, str]:
    """The identity checked and tidied; a one-line ``ValidationError`` naming the field (never its value).

    Needed: family_name, given_names, birth_date (YYYY-MM-DD, not in the future). Optional: sex (M, F, O, U;
    default U), record_number, contact.
    """
    if not isinstance(data, Mapping):
        raise ValidationError("a registry record must be a mapping of field to value")
    unknown = set(data) - set(IDENTITY_FIELDS)
    if unknown:
        raise ValidationError(f"unknown registry field(s): {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(IDENTITY_FIELDS)}")
    out = {"family_name": _line(data.get("family_name"), "family_name", 128, True),
           "given_names": _line(data.get("given_names"), "given_names", 128, True)}
    if not matching.normalise_name(out["family_name"]) or not matching.normalise_name(out["given_names"]):
        raise ValidationError("family name and given names must contain letters")
    birth = data.get("birth_date")
    if birth is None or birth == "":
        raise ValidationError("a registry record needs a birth date (YYYY-MM-DD)")
    try:
        day = birth if isinstance(birth, date) else date.fromisoformat(str(birth))
    except ValueError:
        raise ValidationError("birth date must be a date written YYYY-MM-DD") from None
    if day > date.today() or day.year < 1880:
        raise ValidationError("birth date must lie between 1880 and today")
    out["birth_date"] = day.isoformat()
    sex = data.get("sex") or "U"
    if sex not in SEXES:
        raise ValidationError(f"sex must be one of {', '.join(SEXES)}")
    out["sex"] = sex
    out["record_number"] = _line(data.get("record_number"), "record_number", 64, False)
    if data.get("record_number") and not matching.normalise_record_number(out["record_number"]):
        raise ValidationError("record number must contain letters or digits")
    out["contact"] = _line(data.get("contact"), "contact", 256, False)
    return out


def _check_reason(reason: Any, identity: Mapping[str, str] | None = None) -> str:
    """Why an identity is read: 5-200 characters of one line, and not the identity itself (audited as typed)."""
    if not isinstance(reason, str) or not 5 <= len(reason.strip()) <= 200 or any(ord(c) < 32 for c in reason):
        raise ValidationError("a reason (5-200 characters, one line) is required to read identities")
    if identity:
        text = matching.normalise_name(reason)
        digits = re.sub(r"\D", "", reason)
        words = [matching.normalise_name(w) for k in ("family_name", "given_names")
                 for w in re.split(r"[^\w]+", identity[k])]
        y, m, d = identity["birth_date"].split("-")
        born = (y + m + d, d + m + y, m + d + y)  # the date however it is typed: 1961-04-23, 23.04.1961, 04/23/1961
        mrn = matching.normalise_record_number(identity.get("record_number", ""))
        if any(len(w) >= 3 and w in text for w in words) or any(b in digits for b in born) or \
                (len(mrn) >= 4 and mrn in matching.normalise_record_number(reason)):
            raise ValidationError("the reason must say why without naming the person (it is kept in the audit log)")
    return reason.strip()


# -- keys and sealing ---------------------------------------------------------------------------------------------

@dataclass
class _Ring:
    """The key ring of one operation; reloaded once when a record names a key it does not hold (a rotation that
    started after it was loaded).

    The row itself can be the stale side: read just before a rotation re-sealed it and dropped its old key, it
    names a key the reloaded ring no longer holds. Then the row is read again (it is re-sealed by then: the old
    key is dropped only once no record uses it) and opened with the new key."""

    config: Any
    ring: keyring.Keyring
    reloaded: bool = field(default=False)

    def open(self, person: RegistryPerson) -> dict[str, str]:
        if person.key_id not in self.ring.data_keys and not self.reloaded:
            self.ring, self.reloaded = keyring.load(self.config), True
        if person.key_id not in self.ring.data_keys:
            session = object_session(person)
            if session is not None:
                session.refresh(person)
                if person.key_id not in self.ring.data_keys:
                    self.ring = keyring.load(self.config)
        return json.loads(self.ring.open(person.key_id, person.nonce, person.ciphertext, person.uid.encode()))

    def seal(self, person: RegistryPerson, identity: Mapping[str, str]) -> None:
        plain = json.dumps({k: identity.get(k, "") for k in IDENTITY_FIELDS}, sort_keys=True).encode()
        person.key_id, person.nonce, person.ciphertext = self.ring.seal(plain, person.uid.encode())


def _ring(db: DB, config: Any, *, create: bool = False) -> _Ring:
    """The key ring, checked against the database's key check (a wrong key file is a one-line error)."""
    anyone = db.scalar(select(RegistryPerson.id).limit(1)) is not None
    ring = keyring.load(config, create=create and not anyone)
    check = db.get(RegistryMeta, "key_check")
    if check is None:
        if anyone:
            raise keyring.RegistryKeyError("the registry database has no key check: it was not made by INCloud")
        db.add(RegistryMeta(name="key_check", value=ring.check_value()))
        db.flush()
    elif not hmac.compare_digest(check.value, ring.check_value()):
        raise keyring.RegistryKeyError(f"the registry keys in {ring.source} are not the keys of this database")
    return _Ring(config, ring)


def _digests(ring: keyring.Keyring, identity: Mapping[str, str]) -> list[tuple[str, str]]:
    keys = {**matching.exact_keys(identity), **matching.blocking_codes(identity)}
    return [(kind, ring.digest("blind-index", f"{kind}:{value}")) for kind, value in keys.items() if value]


def _new_uid() -> str:
    import secrets

    return "P" + base64.b32encode(secrets.token_bytes(10)).decode()[:16]


# -- pseudonyms and date shifts (gPAS-style domains) -------------------------------------------------------------

def pseudonym(ring: keyring.Keyring, uid: str, project_id: int, prefix: str = "R") -> str:
    """The person's pseudonym in a project: ``prefix`` + 10 base32 characters of HMAC(domain key, uid), the domain
    key being the project's own (an HMAC of the project id under the registry's pseudonym sub-key). Stable; two
    projects' pseudonyms of one person share nothing a project could compute without the registry's key."""
    domain = bytes.fromhex(ring.digest("pseudonym-domain", f"project:{project_id}"))
    digest = hmac.new(domain, uid.encode(), hashlib.sha256).digest()
    return prefix + base64.b32encode(digest).decode()[:10]


def date_offset(ring: keyring.Keyring, uid: str, project_id: int) -> int:
    """The person's date shift in a project, in days (minus 365..3650, as ``deid.dates``), from the same domain."""
    digest = bytes.fromhex(ring.digest("dateshift", f"project:{project_id}:{uid}"))
    return -(MIN_SHIFT_DAYS + int.from_bytes(digest[:8], "big") % (MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1))


# -- look-ups -----------------------------------------------------------------------------------------------------

def _live(db: DB, person_id: int) -> RegistryPerson:
    """The person, following merges to the one kept."""
    person = db.get(RegistryPerson, person_id)
    seen = set()
    while person is not None and person.merged_into_id is not None and person.id not in seen:
        seen.add(person.id)
        person = db.get(RegistryPerson, person.merged_into_id)
    assert person is not None
    return person


def _by_uid(db: DB, uid: str) -> RegistryPerson:
    if not isinstance(uid, str) or not _UID.match(uid):
        raise ValidationError("a registry id is P followed by 16 letters or digits 2-7")
    person = db.scalar(select(RegistryPerson).where(RegistryPerson.uid == uid))
    if person is None:
        raise NotFound(f"registry person {uid} not found")
    return person


def _exact(db: DB, digests: Iterable[tuple[str, str]]) -> list[RegistryPerson]:
    wanted = [(k, d) for k, d in digests if k in EXACT_KINDS]
    found: dict[int, RegistryPerson] = {}
    for kind, digest in wanted:
        for pid in db.scalars(select(RegistryIndex.person_id).where(RegistryIndex.kind == kind,
                                                                    RegistryIndex.digest == digest)):
            person = _live(db, pid)
            found[person.id] = person
    return list(found.values())


def _exact_hit(db: DB, digests: list[tuple[str, str]]) -> RegistryPerson | None:
    """The registered person this identity certainly is, or None (then the fuzzy comparison decides).

    The hospital record number is authoritative: its hit wins. Names with birth date identify the person only
    when exactly one person has them and the registration brings no record number that contradicts that
    person's (twins of one name and birthday, or one name held by two people, go to the registrar)."""
    mrn = [(k, d) for k, d in digests if k == "mrn"]
    by_mrn = _exact(db, mrn)
    if len(by_mrn) > 1:  # only a merge done wrong could cause it
        raise ValidationError(f"the record number points to several persons ({', '.join(sorted(p.uid for p in by_mrn))})"
                              ": merge or correct them first")
    if by_mrn:
        return by_mrn[0]
    by_name = _exact(db, [(k, d) for k, d in digests if k == "name_dob"])
    if len(by_name) != 1:
        return None
    if mrn and db.scalar(select(RegistryIndex.id).where(RegistryIndex.person_id == by_name[0].id,
                                                        RegistryIndex.kind == "mrn").limit(1)) is not None:
        return None  # that person has another record number
    return by_name[0]


def _apart(db: DB, ids: set[int]) -> set[frozenset[int]]:
    rows = db.execute(select(RegistryDecision.person_a_id, RegistryDecision.person_b_id).where(
        RegistryDecision.decision == "keep-apart", RegistryDecision.person_a_id.in_(ids),
        RegistryDecision.person_b_id.in_(ids)))
    return {frozenset(r) for r in rows}


def candidates(db: DB, ring: _Ring, identity: Mapping[str, str], config: Any) -> list[tuple[RegistryPerson, float]]:
    """Registered persons that resemble ``identity`` (score >= ``possible_threshold``), best first.

    Only persons sharing a blocking code are decrypted (in memory, for this comparison). A candidate the
    registrar kept apart from a candidate matching at ``match_threshold`` or better is left out (that question
    was answered), unless it matches that well itself (then the registration is ambiguous and both are shown)."""
    blocks = [(k, d) for k, d in _digests(ring.ring, identity) if k.startswith("blk_")]
    ids: set[int] = set()
    for kind, digest in blocks:
        ids.update(db.scalars(select(RegistryIndex.person_id).where(RegistryIndex.kind == kind,
                                                                    RegistryIndex.digest == digest)))
    scored: dict[int, tuple[RegistryPerson, float]] = {}
    cfg = config.registry
    for pid in ids:
        person = _live(db, pid)
        if person.id in scored:
            continue
        value = matching.score(identity, ring.open(person)).value
        if value >= cfg.possible_threshold:
            scored[person.id] = (person, value)
    strong = {pid for pid, (_, s) in scored.items() if s >= cfg.match_threshold}
    apart = _apart(db, set(scored))
    kept = [(p, s) for pid, (p, s) in scored.items()
            if pid in strong or not any(frozenset((pid, q)) in apart for q in strong if q != pid)]
    return sorted(kept, key=lambda ps: -ps[1])


# -- registration, decisions, enrolment ---------------------------------------------------------------------------

@dataclass
class Registration:
    """What ``register`` did: ``status`` new, existing (an exact look-up found the person) or merged (the
    registrar said it is ``same_as`` a registered person); ``pseudonym`` when a project was given."""

    uid: str
    status: str
    pseudonym: str | None = None
    kept_apart_from: list[str] = field(default_factory=list)


def _add_indexes(db: DB, ring: keyring.Keyring, person: RegistryPerson, identity: Mapping[str, str]) -> None:
    for kind, digest in _digests(ring, identity):
        exists = db.scalar(select(RegistryIndex.id).where(RegistryIndex.person_id == person.id,
                                                          RegistryIndex.kind == kind, RegistryIndex.digest == digest))
        if exists is None:
            db.add(RegistryIndex(person_id=person.id, kind=kind, digest=digest))
    db.flush()


#: The PostgreSQL advisory lock key that serialises registrations ("INCR").
_LOCK_KEY = 0x494E4352


def _serialise(db: DB) -> None:
    """Hold the registry's write lock until the transaction ends, before any look-up, so that two registrations
    of one new person at once give one person (the second sees the first's rows and finds it exactly).

    PostgreSQL: a transaction-level advisory lock. SQLite: a write statement, which begins the transaction and
    takes the database's one write lock (others wait up to the busy timeout); reads after it see every commit."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    else:
        db.execute(text("UPDATE registry_meta SET value = value WHERE name = 'key_check'"))


def register(db: DB, actor: Actor, data: Mapping[str, Any], *, config: Any, same_as: str | None = None,
             keep_apart: bool = False, project: int | str | Project | None = None) -> Registration:
    """Register a person (registrars only). An exact look-up hit returns the registered person; a resemblance
    raises ``DuplicateSuspected`` unless the registrar decided: ``same_as`` (the identity becomes a variant of
    that person: merged, found exactly next time) or ``keep_apart`` (a new person; the decision is recorded
    against each candidate). With ``project``, the person is enrolled there too. Audited by internal id only."""
    require_registrar(actor)
    if same_as and keep_apart:
        raise ValidationError("choose same_as or keep_apart, not both")
    identity = check_identity(data)
    _serialise(db)
    ring = _ring(db, config, create=True)
    digests = _digests(ring.ring, identity)
    hit = None if same_as else _exact_hit(db, digests)
    if hit is not None:
        person, status, apart = hit, "existing", []
    else:
        found = candidates(db, ring, identity, config)
        target = _by_uid(db, same_as) if same_as else None
        if target is not None and target.merged_into_id is not None:
            target = _live(db, target.id)
        if found and not (same_as or keep_apart):
            raise DuplicateSuspected([(p.uid, s) for p, s in found])
        person = RegistryPerson(uid=_new_uid(), created_by=actor.user)
        ring.seal(person, identity)
        db.add(person)
        db.flush()
        _add_indexes(db, ring.ring, person, identity)
        audit(db, actor, "registry.register", "registry_person", person.uid)
        status, apart = "new", []
        if target is not None:
            score = next((s for p, s in found if p.id == target.id), None)
            _merge(db, actor, target, person, score)
            person, status = target, "merged"
        elif keep_apart:
            for other, score in found:
                db.add(RegistryDecision(person_a_id=other.id, person_b_id=person.id, decision="keep-apart",
                                        score=score, decided_by=actor.user))
                apart.append(other.uid)
            audit(db, actor, "registry.keep_apart", "registry_person", person.uid, others=apart)
    out = Registration(person.uid, status, kept_apart_from=apart)
    if project is not None:
        out.pseudonym = enrol(db, actor, person.uid, project, config=config, _ring_=ring).pseudonym
    db.flush()
    return out


def _merge(db: DB, actor: Actor, keep: RegistryPerson, drop: RegistryPerson, score: float | None) -> None:
    if keep.id == drop.id:
        raise ValidationError("a person cannot be merged into itself")
    clash = db.scalars(select(RegistryEnrolment).where(RegistryEnrolment.person_id == drop.id,
                                                       RegistryEnrolment.project_id.in_(
                                                           select(RegistryEnrolment.project_id)
                                                           .where(RegistryEnrolment.person_id == keep.id)))).first()
    if clash is not None:
        raise ValidationError(f"{keep.uid} and {drop.uid} are both enrolled in project #{clash.project_id}: "
                              "merge their archive participants first")
    for row in db.scalars(select(RegistryEnrolment).where(RegistryEnrolment.person_id == drop.id)):
        row.person_id = keep.id
    existing = {(r.kind, r.digest) for r in db.scalars(select(RegistryIndex).where(RegistryIndex.person_id == keep.id))}
    for row in list(db.scalars(select(RegistryIndex).where(RegistryIndex.person_id == drop.id))):
        if (row.kind, row.digest) in existing:
            db.delete(row)
        else:
            row.person_id = keep.id
    drop.merged_into_id = keep.id
    db.add(RegistryDecision(person_a_id=keep.id, person_b_id=drop.id, decision="merge", score=score,
                            decided_by=actor.user))
    db.flush()
    audit(db, actor, "registry.merge", "registry_person", keep.uid, merged=drop.uid)


def decide(db: DB, actor: Actor, keep_uid: str, other_uid: str, *, keep_apart: bool = False) -> str:
    """A registrar's decision on two registered persons: merge ``other`` into ``keep`` (its enrolments and look-up
    keys move; it stays, sealed, as history) or keep them apart (recorded; not offered again). Returns the
    decision."""
    require_registrar(actor)
    keep, other = _live(db, _by_uid(db, keep_uid).id), _live(db, _by_uid(db, other_uid).id)
    if keep.id == other.id:
        raise ValidationError(f"{keep_uid} and {other_uid} are already one person")
    if keep_apart:
        db.add(RegistryDecision(person_a_id=keep.id, person_b_id=other.id, decision="keep-apart",
                                decided_by=actor.user))
        db.flush()
        audit(db, actor, "registry.keep_apart", "registry_person", keep.uid, others=[other.uid])
        return "keep-apart"
    _merge(db, actor, keep, other, None)
    return "merge"


def enrol(db: DB, actor: Actor, uid: str, project: int | str | Project, *, config: Any,
          _ring_: _Ring | None = None) -> RegistryEnrolment:
    """Enrol a registered person in a project (registrars only): the project's pseudonym and an archive
    participant labelled with it (sex and birth year as research attributes). Idempotent."""
    require_registrar(actor)
    person = _live(db, _by_uid(db, uid).id)
    target = require(db, SYSTEM, project, Action.read)
    row = db.scalar(select(RegistryEnrolment).where(RegistryEnrolment.person_id == person.id,
                                                    RegistryEnrolment.project_id == target.id))
    if row is not None:
        return row
    ring = _ring_ or _ring(db, config)
    identity = ring.open(person)
    label = pseudonym(ring.ring, person.uid, target.id, config.registry.pseudonym_prefix)
    attrs: dict[str, Any] = {"birth_year": int(identity["birth_date"][:4])}
    if identity["sex"] in ("M", "F", "O"):
        attrs["sex"] = identity["sex"]
    participant = db.scalar(select(Participant).where(Participant.label == label))
    if participant is None:
        participant = records.add_participant(db, SYSTEM, target, label, **attrs)
    row = RegistryEnrolment(person_id=person.id, project_id=target.id, pseudonym=label,
                            participant_id=participant.id, created_by=actor.user)
    db.add(row)
    db.flush()
    audit(db, actor, "registry.enrol", "registry_person", person.uid, project=target.code, participant=label)
    return row


# -- reading identities (registrars, audited) ---------------------------------------------------------------------

def _enrolments(db: DB, person: RegistryPerson) -> list[dict[str, Any]]:
    rows = db.execute(select(RegistryEnrolment, Project.code).join(Project, Project.id == RegistryEnrolment.project_id)
                      .where(RegistryEnrolment.person_id == person.id).order_by(RegistryEnrolment.id))
    out = []
    for enrolment, code in rows:
        sessions = []
        if enrolment.participant_id is not None:
            sessions = [{"session": s.label, "scan_date": s.scan_date.isoformat() if s.scan_date else None}
                        for s in db.scalars(select(Session).where(Session.participant_id == enrolment.participant_id)
                                            .order_by(Session.id))]
        out.append({"project": code, "pseudonym": enrolment.pseudonym, "sessions": sessions})
    return out


def show(db: DB, actor: Actor, uid: str, reason: str, *, config: Any) -> dict[str, Any]:
    """A person's identity, enrolments and scans in every project (registrars only; audited with the reason).

    The person's earlier scans in other projects are linked here, by the one internal id."""
    require_registrar(actor)
    person = _by_uid(db, uid)
    _check_reason(reason)
    identity = _ring(db, config).open(person)
    reason = _check_reason(reason, identity)
    live = _live(db, person.id)
    audit(db, actor, "registry.read", "registry_person", person.uid, reason=reason,
          fields=[k for k in IDENTITY_FIELDS if identity.get(k)])
    db.flush()
    return {"uid": person.uid, "merged_into": live.uid if live.id != person.id else None, "identity": identity,
            "enrolments": _enrolments(db, live), "key_id": person.key_id}


def _probe(record_number: str | None, family_name: str | None, given_names: str | None,
           birth_date: str | None) -> dict[str, str]:
    """An exact look-up's checked fields: a record number, names with birth date, or both (ValidationError
    naming the field, never its value)."""
    probe: dict[str, str] = {}
    if record_number:
        probe["record_number"] = _line(record_number, "record_number", 64, True)
    if family_name or given_names or birth_date:
        probe.update(check_identity({"family_name": family_name, "given_names": given_names,
                                     "birth_date": birth_date}))
    if not probe:
        raise ValidationError("a look-up needs a record number, or family name, given names and birth date")
    return probe


def _probe_digests(ring: _Ring, probe: Mapping[str, str]) -> list[tuple[str, str]]:
    """The blind-index digests of a checked look-up (``_probe``)."""
    digests = []
    if probe.get("record_number"):
        digests.append(("mrn", ring.ring.digest("blind-index",
                                                "mrn:" + matching.normalise_record_number(probe["record_number"]))))
    if "family_name" in probe:
        digests.append(("name_dob", ring.ring.digest("blind-index",
                                                     "name_dob:" + matching.exact_keys(probe)["name_dob"])))
    return digests


def find(db: DB, actor: Actor, reason: str, *, config: Any, record_number: str | None = None,
         family_name: str | None = None, given_names: str | None = None,
         birth_date: str | None = None) -> list[str]:
    """Internal ids of the persons an exact look-up finds: by record number, or by names with birth date
    (registrars only; audited with the reason, never with what was looked up)."""
    require_registrar(actor)
    probe = _probe(record_number, family_name, given_names, birth_date)
    ring = _ring(db, config)
    reason = _check_reason(reason, {"family_name": probe.get("family_name", ""),
                                    "given_names": probe.get("given_names", ""),
                                    "birth_date": probe.get("birth_date", "0000-00-00"),
                                    "record_number": probe.get("record_number", "")})
    digests = _probe_digests(ring, probe)
    uids = sorted(p.uid for p in _exact(db, digests))
    audit(db, actor, "registry.find", "registry", "-", reason=reason, by=sorted(k for k, _ in digests),
          found=len(uids))
    db.flush()
    return uids


def project_pseudonym(db: DB, actor: Actor, project: int | str | Project, *, config: Any,
                      record_number: str | None = None, family_name: str | None = None,
                      given_names: str | None = None, birth_date: str | None = None) -> tuple[str, int] | None:
    """(pseudonym, date shift) of the person an exact look-up certainly finds (``_exact_hit``: the record number
    wins; one name with birth date held by two people finds nobody) when that person is enrolled in
    ``project``; None otherwise. For a clinic upload the caller has allowed to look up (the upload route's
    ``custom:incloud:lookup`` scope and write on the project): it reveals no identity, only the project's own
    pseudonym. Audited ``registry.lookup`` (project, the kinds of key used, found or not; never the values)."""
    target = require(db, actor, project, Action.write)
    probe = _probe(record_number, family_name, given_names, birth_date)
    if db.scalar(select(RegistryPerson.id).limit(1)) is None:
        # A site that keeps no registry (no key file either): nobody can be found, so the caller's own pseudonym
        # applies; loading the keys would only fail on a file such a site never made.
        audit(db, actor, "registry.lookup", "project", target.code, by=[], found=False)
        db.flush()
        return None
    ring = _ring(db, config)
    digests = _probe_digests(ring, probe)
    person = _exact_hit(db, digests)
    row = None if person is None else db.scalar(select(RegistryEnrolment).where(
        RegistryEnrolment.person_id == person.id, RegistryEnrolment.project_id == target.id))
    audit(db, actor, "registry.lookup", "project", target.code, by=sorted(k for k, _ in digests),
          found=row is not None)
    db.flush()
    if row is None or person is None:
        return None
    return row.pseudonym, date_offset(ring.ring, person.uid, target.id)


# -- research attributes (project members) -----------------------------------------------------------------------

def attributes(db: DB, actor: Actor, pseudonym_: str, changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A participant's pseudonymous research attributes by its pseudonym; ``changes`` are written (project
    members and owners: ``records.update_participant`` decides). Never touches the identity."""
    row = get_participant(db, actor, pseudonym_, Action.write if changes else Action.read)
    if changes:
        row = records.update_participant(db, actor, row, **dict(changes))
    return {"pseudonym": row.label, **{k: getattr(row, k) for k in records.PARTICIPANT_COLUMNS}}


# -- key rotation -------------------------------------------------------------------------------------------------

def rotate_key(engine: Any, config: Any, actor: Actor, *, batch: int = 200) -> dict[str, Any]:
    """Re-encrypt every record under a new data key, without stopping the site.

    With a key file: a new key is added and made active (the file then holds old and new, so every reader,
    which re-reads the key ring when it meets an unknown key id, opens both), records are re-sealed in small
    transactions, and the old keys are dropped from the file once no record uses them (checked again after the
    drop; a record a writer sealed meanwhile under an old key is re-sealed and the check repeated). With the
    key variable, the operator makes the new key active there first; this re-seals under it. Registrars and
    the console only."""
    from incloud_kernel.db import transaction

    require_registrar(actor)
    with transaction(engine) as db:
        old = _ring(db, config).ring
    ring = old.with_new_active() if old.path is not None else old
    if old.path is not None:
        ring.save()
    total = 0
    while True:
        while True:
            with transaction(engine) as db:
                rows = list(db.scalars(select(RegistryPerson).where(RegistryPerson.key_id != ring.active)
                                       .order_by(RegistryPerson.id).limit(batch).with_for_update()))
                for person in rows:
                    plain = ring.open(person.key_id, person.nonce, person.ciphertext, person.uid.encode())
                    person.key_id, person.nonce, person.ciphertext = ring.seal(plain, person.uid.encode())
                total += len(rows)
            if len(rows) < batch:
                break
        if ring.path is None:
            break
        final = keyring.Keyring({ring.active: ring.data_keys[ring.active]}, ring.active, ring.index_key,
                                ring.source, ring.path)
        final.save()
        with transaction(engine) as db:
            left = db.scalar(select(func.count()).select_from(RegistryPerson)
                             .where(RegistryPerson.key_id != ring.active))
        if not left:
            break
        ring.save()  # a writer sealed under an old key meanwhile: keep both and go round again
    with transaction(engine) as db:
        audit(db, actor, "registry.rotate_key", "registry", "-", active=ring.active, resealed=total,
              dropped=sorted(k for k in old.data_keys if k != ring.active))
    return {"active": ring.active, "resealed": total,
            "dropped": sorted(k for k in old.data_keys if k != ring.active) if ring.path else []}


# -- de-identification hook ---------------------------------------------------------------------------------------

def dataset_digests(ring: keyring.Keyring, ds: Dataset) -> list[str]:
    """The exact blind-index digests a DICOM dataset can match, best first: its Patient ID as a record number,
    then its name with birth date (as ``matching.exact_keys`` forms them at registration)."""
    out: list[str] = []
    pid = matching.normalise_record_number(str(ds.get("PatientID", "") or ""))
    if pid:
        out.append(ring.digest("blind-index", "mrn:" + pid))
    name = str(ds.get("PatientName", "") or "")
    born = str(ds.get("PatientBirthDate", "") or "").strip()
    if "^" in name and len(born) == 8 and born.isdigit():
        family, given = (name.split("^") + [""])[:2]
        key = "|".join((matching.normalise_name(family), matching.normalise_name(given),
                        f"{born[:4]}-{born[4:6]}-{born[6:]}"))
        out.append(ring.digest("blind-index", "name_dob:" + key))
    return out


class RegistryPseudonym:
    """Pseudonym callback for ``deid``: a source whose Patient ID (as a record number) or name with birth date
    is registered and enrolled in the project gets its registry pseudonym; anyone else the default HMAC one.

    Holds only blind-index digests and pseudonyms (no identity), so it pickles to worker processes."""

    def __init__(self, index_key: bytes, table: dict[str, tuple[str, int]], fallback: HmacPseudonym,
                 fallback_dates: HmacDateOffset) -> None:
        self._ring = keyring.Keyring({}, "", index_key)
        self._table, self._fallback, self._dates = table, fallback, fallback_dates

    def lookup(self, ds: Dataset) -> tuple[str, int] | None:
        for digest in dataset_digests(self._ring, ds):
            hit = self._table.get(digest)
            if hit:
                return hit
        return None

    def __call__(self, ds: Dataset) -> str:
        hit = self.lookup(ds)
        return hit[0] if hit else self._fallback(ds)

    def date_offset(self, ds: Dataset) -> int:
        hit = self.lookup(ds)
        return hit[1] if hit else self._dates(ds)

    def __repr__(self) -> str:
        return f"RegistryPseudonym(entries={len(self._table)})"


class RegistryDateOffset:
    """Date-offset source for ``deid`` that asks the same table (a class so that worker processes get it)."""

    def __init__(self, source: RegistryPseudonym) -> None:
        self._source = source

    def __call__(self, ds: Dataset) -> int:
        return self._source.date_offset(ds)

    def __repr__(self) -> str:
        return "RegistryDateOffset()"


def participant_date_offset(db: DB, config: Any, participant_id: int) -> int | None:
    """The registry's date shift (days) of the person enrolled as archive participant ``participant_id`` in its
    project, for a study bound to a booking (whose PatientID is the pseudonym, not a record number); None when
    the participant is not an enrolled person. Needs the registry keys only then. No decryption."""
    enrolment = db.scalar(select(RegistryEnrolment).where(RegistryEnrolment.participant_id == participant_id))
    if enrolment is None:
        return None
    person = _live(db, enrolment.person_id)
    return date_offset(_ring(db, config).ring, person.uid, enrolment.project_id)


def deid_sources(site: Any, project: int | str | Project, study: Iterable[Dataset] | None = None
                 ) -> tuple[RegistryPseudonym, RegistryDateOffset]:
    """The pseudonym and date-offset callbacks that make ``deid`` use the registry for ``project``: the
    enrolled persons' exact look-up digests mapped to their project pseudonym and date shift. No decryption.
    With ``study`` (the original datasets of one study, as ingest has them) the table holds only the persons
    that study can match, so each arriving study costs one indexed look-up, not a read of the project."""
    from incloud_kernel.db import transaction

    key = site.secret_key()
    with transaction(site.engine) as db:
        target = require(db, SYSTEM, project, Action.read)
        if db.scalar(select(RegistryEnrolment.id).where(RegistryEnrolment.project_id == target.id).limit(1)) is None:
            fallback = RegistryPseudonym(b"\0" * 32, {}, HmacPseudonym(key), HmacDateOffset(key))
            return fallback, RegistryDateOffset(fallback)  # nobody enrolled: the defaults, no key ring needed
        ring = _ring(db, site.config).ring
        stmt = (select(RegistryIndex.digest, RegistryEnrolment.pseudonym, RegistryPerson.uid)
                .join(RegistryEnrolment, RegistryEnrolment.person_id == RegistryIndex.person_id)
                .join(RegistryPerson, RegistryPerson.id == RegistryIndex.person_id)
                .where(RegistryEnrolment.project_id == target.id, RegistryIndex.kind.in_(EXACT_KINDS)))
        if study is not None:
            wanted = {d for ds in study for d in dataset_digests(ring, ds)}
            stmt = stmt.where(RegistryIndex.digest.in_(sorted(wanted)))
        rows = db.execute(stmt)
        table = {digest: (label, date_offset(ring, uid, target.id)) for digest, label, uid in rows}
    source = RegistryPseudonym(ring.index_key, table, HmacPseudonym(key), HmacDateOffset(key))
    return source, RegistryDateOffset(source)


__all__ = ["DuplicateSuspected", "Registration", "check_identity", "register", "decide", "enrol", "show", "find",
           "attributes", "rotate_key", "pseudonym", "project_pseudonym", "date_offset", "candidates", "deid_sources", "participant_date_offset",
           "RegistryPseudonym", "RegistryDateOffset", "dataset_digests"]
