"""The participant registry's keys: AES-GCM data keys (rotated) and one index key (blind indexes, pseudonyms).

Keys come from a key file (``[registry] key_file``, default ``$INCLOUD_HOME/registry/keys.json``, folder 0700,
file 0600) or, KMS-style, from an environment variable holding the same JSON (``[registry] key_env``). They are
never stored in the database: the database only holds, per encrypted record, the *id* of the data key that
sealed it, and a key check (an HMAC of a constant) that tells a wrong key file from a right one.
Never log, print or put into an error a key, a plaintext or a ciphertext.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from incloud_kernel.errors import IncloudError
from incloud_kernel.site import private_dir

FORMAT = "incloud-registry-keys/1"
NONCE_BYTES = 12  # 96-bit nonces, as NIST SP 800-38D recommends for GCM


class RegistryKeyError(IncloudError):
    """The registry's keys are missing, unreadable or do not match the database (one line, no key material)."""


def _derive(index_key: bytes, purpose: str) -> bytes:
    """A sub-key of the index key for one purpose (HKDF-SHA256), so blind indexes, pseudonyms and date shifts
    never share a key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"incloud-registry {purpose} v1".encode()).derive(index_key)


@dataclass
class Keyring:
    """Data keys by id (one ``active`` for new encryptions) and the index key; ``source`` says where from."""

    data_keys: dict[str, bytes]
    active: str
    index_key: bytes
    source: str = ""
    path: Path | None = None
    _derived: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:  # never show key material
        return f"Keyring(active={self.active!r}, keys={sorted(self.data_keys)!r}, source={self.source!r})"

    # -- envelope -----------------------------------------------------------------------------------------------
    def seal(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes, bytes]:
        """Encrypt under the active key: (key id, nonce, ciphertext with its GCM tag). ``aad`` binds the
        ciphertext to its row (the person's internal id), so a ciphertext copied to another row does not open."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return self.active, nonce, AESGCM(self.data_keys[self.active]).encrypt(nonce, plaintext, aad)

    def open(self, key_id: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Decrypt a record sealed under ``key_id``; a missing key or a failed tag is a one-line ``RegistryKeyError``."""
        key = self.data_keys.get(key_id)
        if key is None:
            raise RegistryKeyError(f"registry data key {key_id!r} is not in the key ring ({self.source}): restore the key "
                            "file from the backup, or finish the rotation with the old key present")
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise RegistryKeyError("a registry record failed its integrity check (wrong key or altered row)") from None

    # -- keyed digests ------------------------------------------------------------------------------------------
    def sub_key(self, purpose: str) -> bytes:
        if purpose not in self._derived:
            self._derived[purpose] = _derive(self.index_key, purpose)
        return self._derived[purpose]

    def digest(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 (hex) of ``value`` under the sub-key of ``purpose`` ("blind-index", "pseudonym"...)."""
        return hmac.new(self.sub_key(purpose), value.encode("utf-8"), hashlib.sha256).hexdigest()

    def check_value(self) -> str:
        """What the database stores to recognise this key ring's index key (not the key, not reversible)."""
        return self.digest("key-check", "incloud-registry")

    # -- persistence --------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "active": self.active, "index_key": self.index_key.hex(),
                           "data_keys": {k: v.hex() for k, v in self.data_keys.items()}}, indent=1)

    def save(self, *, exclusive: bool = False) -> bool:
        """Write the key file atomically (0600 from creation; folder 0700). Only for key-file key rings.

        ``exclusive``: only if no key file exists (a first key ring made by two processes at once: one wins, and
        this returns False for the other, which must load the winner's)."""
        if self.path is None:
            raise RegistryKeyError(f"the registry keys come from {self.source}; rotate them in the key service, put the "
                            "new key in the variable as the active one, then run rotate-key")
        private_dir(self.path.parent)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, self.path)
            return True
        try:
            os.link(tmp, self.path)  # fails if the file exists: never overwrite another process's first key ring
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def with_new_active(self) -> Keyring:
        """A copy holding one more data key, made active (old keys stay until no record uses them)."""
        key_id = "k" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
        keys = dict(self.data_keys)
        keys[key_id] = AESGCM.generate_key(bit_length=256)
        return Keyring(keys, key_id, self.index_key, self.source, self.path)


def _parse(text: str, source: str, path: Path | None) -> Keyring:
    text = text.strip()
    if text and not text.startswith("{"):
        try:
            text = base64.b64decode(text, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise RegistryKeyError(f"registry keys in {source} are neither JSON nor base64 JSON") from None
    try:
        data = json.loads(text)
        keys = {str(k): bytes.fromhex(v) for k, v in data["data_keys"].items()}
        ring = Keyring(keys, str(data["active"]), bytes.fromhex(data["index_key"]), source, path)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RegistryKeyError(f"registry keys in {source} are not a valid {FORMAT} key ring") from None
    if ring.active not in keys or any(len(k) != 32 for k in keys.values()) or len(ring.index_key) != 32:
        raise RegistryKeyError(f"registry keys in {source}: the active key must be present and every key 256 bits")
    return ring


def key_path(config: object) -> Path:
    """Where the key file is: ``[registry] key_file`` or ``$INCLOUD_HOME/registry/keys.json``."""
    cfg = config.registry  # type: ignore[attr-defined]
    return Path(cfg.key_file).expanduser() if cfg.key_file else config.home / "registry" / "keys.json"  # type: ignore


def in_environment(config: object) -> bool:
    """Whether the key ring comes from the environment variable named by ``[registry] key_env`` (set and not
    empty): then the site has no key file to keep."""
    cfg = config.registry  # type: ignore[attr-defined]
    return bool(cfg.key_env and os.environ.get(cfg.key_env))


def load(config: object, *, create: bool = False) -> Keyring:
    """The key ring: from the environment variable named by ``[registry] key_env`` if set, else the key file.

    ``create=True`` makes a new key file when none exists (only for a registry that holds no record yet: the
    caller checks). A missing file is a one-line ``RegistryKeyError`` naming the path, never a traceback.
    """
    cfg = config.registry  # type: ignore[attr-defined]
    if in_environment(config):
        return _parse(os.environ[cfg.key_env], f"environment variable {cfg.key_env}", None)
    path = key_path(config)
    try:
        return _parse(path.read_text(), f"key file {path}", path)
    except FileNotFoundError:
        if not create:
            raise RegistryKeyError(f"registry key file {path} is missing: identities cannot be read or written; restore it "
                            "from the key backup (or set the key variable)") from None
    except PermissionError:
        raise RegistryKeyError(f"registry key file {path} is not readable by this user") from None
    ring = Keyring({}, "", secrets.token_bytes(32), f"key file {path}", path).with_new_active()
    return ring if ring.save(exclusive=True) else load(config)

