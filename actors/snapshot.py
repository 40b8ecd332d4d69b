"""The checkpoint record and its file format.

A ``Checkpoint`` is a snapshot of one job's progress (the seeds' entity, same field
names). ``encode`` turns it into file bytes and ``decode`` reads them back, refusing
anything damaged.

File format
    Plain: one JSON object, the checkpoint's fields plus ``"checksum"``::

        {"data": {...}, "id": "...", "job_id": "...", "metadata": {...},
         "sequence_number": 12, "status": "completed", "timestamp": "...+00:00",
         "version": "1.0.0", "checksum": "<sha256 hex>"}

    The checksum is SHA-256 over the canonical JSON of every other field: orjson with
    sorted keys, compact. The writer emits exactly that canonical text with the checksum
    spliced in as the last key, so a reader verifies by hashing the bytes it already has;
    a file re-formatted by hand still verifies (more slowly) through re-serialisation.

    Gzip (``gzip=True``): the same JSON, gzipped; recognised on reading by its magic bytes.

    Encrypted (``key=``, 32 bytes, AES-256-GCM): ``b"SWCK1"`` + 8-byte key id + 12-byte
    nonce + ciphertext-and-tag of the (possibly gzipped) JSON; the magic and key id are
    authenticated too. The key id (an HMAC of a fixed label under the key) tells a wrong
    key (``CheckpointKeyError``) from a damaged file (``CheckpointCorruptionError``).
    Encryption needs the optional ``cryptography`` package (``scorewise[crypto]``).

Versions
    ``version`` is semantic. A file of a newer MAJOR version raises
    ``CheckpointVersionError``; the same major with a newer minor loads (fields this
    program does not know are ignored); older versions load. ``encode`` always writes
    ``SCHEMA_VERSION``; a decoded checkpoint keeps the version its file had.

Errors (all ``CheckpointError``)
    ``CheckpointCorruptionError`` (bad JSON, checksum mismatch, wrong structure, truncated
    gzip, failed AES-GCM authentication; the message says which),
    ``CheckpointVersionError``, ``CheckpointKeyError`` (missing or wrong key, bad key text),
    ``CheckpointValidationError`` (a field value breaks the rules when a record is built;
    also a ``ValueError``), ``CheckpointCreationError`` (cannot encode or save),
    ``CheckpointNotFoundError``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import gzip as gzip_mod
import hashlib
import hmac
import os
import re
import typing
import uuid
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import orjson

from actors.serde import ConfigError, converter, structure

__all__ = [
    "ENCRYPTED_MAGIC",
    "KEY_ENV_VAR",
    "SCHEMA_VERSION",
    "Checkpoint",
    "CheckpointCorruptionError",
    "CheckpointCreationError",
    "CheckpointData",
    "CheckpointError",
    "CheckpointKeyError",
    "CheckpointMetadata",
    "CheckpointNotFoundError",
    "CheckpointStatus",
    "CheckpointValidationError",
    "CheckpointVersionError",
    "ErrorRecord",
    "ProgressState",
    "ResourceSnapshot",
    "check_key",
    "decode",
    "encode",
    "generate_key",
    "load_key",
    "verify",
]

SCHEMA_VERSION = "1.0.0"
ENCRYPTED_MAGIC = b"SWCK1"
KEY_ENV_VAR = "SCOREWISE_CHECKPOINT_KEY"
KEY_SIZE = 32

_GZIP_MAGIC = b"\x1f\x8b"
_KEY_ID_SIZE = 8
_NONCE_SIZE = 12
_TAG_SIZE = 16
_HEADER_SIZE = len(ENCRYPTED_MAGIC) + _KEY_ID_SIZE + _NONCE_SIZE
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)


# -- errors -----------------------------------------------------------------------------


class CheckpointError(Exception):
    """Base of every checkpoint error."""


class CheckpointCreationError(CheckpointError):
    """A checkpoint could not be encoded or saved (the cause is chained)."""


class CheckpointCorruptionError(CheckpointError):
    """A checkpoint file is damaged; the message says how."""


class CheckpointNotFoundError(CheckpointError):
    """No checkpoint with the requested sequence number or id."""


class CheckpointValidationError(CheckpointError, ValueError):
    """A checkpoint field breaks a validation rule."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint was written by a newer, incompatible schema version."""


class CheckpointKeyError(CheckpointError):
    """The encryption key is missing, wrong or malformed (not a damaged file)."""


# -- validators -------------------------------------------------------------------------


def _non_negative(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise CheckpointValidationError(f"{attr.name} must not be negative, got {value!r}")


def _percentage(_inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value <= 100:
        raise CheckpointValidationError(f"{attr.name} must be between 0 and 100, got {value!r}")


def _utc(value: datetime) -> datetime:
    if type(value) is datetime and value.tzinfo is UTC:
        return value
    if not isinstance(value, datetime):
        raise CheckpointValidationError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise CheckpointValidationError(f"timestamp must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def _reasonable_time(_inst: Any, attr: attrs.Attribute[Any], value: datetime) -> None:
    if not _EARLIEST <= value < _LATEST:
        raise CheckpointValidationError(
            f"{attr.name} must be between 2000 and 2099, got {value.isoformat()}"
        )


def _uuid(_inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise CheckpointValidationError(f"{attr.name} must be a UUID, got {value!r}") from None


def _semver(_inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _VERSION_RE.fullmatch(value):
        raise CheckpointValidationError(
            f"{attr.name} must be a semantic version like 1.0.0, got {value!r}"
        )


def _positive(_inst: Any, attr: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise CheckpointValidationError(f"{attr.name} must be at least 1, got {value!r}")


def _not_empty(_inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise CheckpointValidationError(f"{attr.name} must not be empty")


def _checksum(_inst: Any, attr: attrs.Attribute[Any], value: str) -> None:
    if value and not _HEX64_RE.fullmatch(value):
        raise CheckpointValidationError(
            f"{attr.name} must be empty or a SHA-256 hex digest, got {value!r}"
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


# -- the record -------------------------------------------------------------------------


class CheckpointStatus(enum.Enum):
    """Lifecycle state of a checkpoint (the seeds' enum; stored by value)."""

    ACTIVE = "active"
    COMPLETED = "completed"
    CORRUPTED = "corrupted"
    EXPIRED = "expired"


@attrs.frozen(kw_only=True)
class ResourceSnapshot:
    """Resource usage when the checkpoint was taken (MB, percent, counts)."""

    timestamp: datetime = attrs.field(converter=_utc)
    memory_usage: int = attrs.field(validator=_non_negative)
    cpu_usage: float = attrs.field(validator=_non_negative)
    disk_usage: int = attrs.field(validator=_non_negative)
    network_connections: int = attrs.field(validator=_non_negative)
    process_count: int = attrs.field(validator=_non_negative)


@attrs.frozen(kw_only=True)
class ErrorRecord:
    """One failure of one item."""

    timestamp: datetime = attrs.field(converter=_utc)
    item_id: str
    error_type: str
    error_message: str
    retry_count: int = attrs.field(default=0, validator=_non_negative)
    resolved: bool = False


@attrs.frozen(kw_only=True)
class ProgressState:
    """Which items are done, failed and pending (item keys), and how far along the job is."""

    current_item: str | None = None
    completed_items: list[str] = attrs.Factory(list)
    failed_items: list[str] = attrs.Factory(list)
    pending_items: list[str] = attrs.Factory(list)
    total_count: int = attrs.field(default=0, validator=_non_negative)
    completion_percentage: float = attrs.field(default=0.0, validator=_percentage)


@attrs.frozen(kw_only=True)
class CheckpointMetadata:
    """Counters and context about the job at checkpoint time."""

    total_items: int = attrs.field(default=0, validator=_non_negative)
    completed_items: int = attrs.field(default=0, validator=_non_negative)
    failed_items: int = attrs.field(default=0, validator=_non_negative)
    processing_time: float = attrs.field(default=0.0, validator=_non_negative)
    browser_sessions: list[str] = attrs.Factory(list)
    system_resources: ResourceSnapshot | None = None


@attrs.frozen(kw_only=True)
class CheckpointData:
    """The state itself: the job's own data, Playwright ``storage_state``, progress, errors."""

    job_state: dict[str, Any] = attrs.Factory(dict)
    browser_state: dict[str, Any] | None = None
    progress: ProgressState = attrs.Factory(ProgressState)
    errors: list[ErrorRecord] = attrs.Factory(list)


@attrs.frozen(kw_only=True)
class Checkpoint:
    """A snapshot of a job's progress.

    ``id`` (a UUID) and ``timestamp`` (aware, stored in UTC) default to fresh values;
    ``sequence_number`` counts from 1 per job. ``checksum`` is filled in by ``decode``;
    ``encode`` ignores the value it is given. Invalid values raise
    ``CheckpointValidationError`` when the record is built.
    """

    version: str = attrs.field(default=SCHEMA_VERSION, validator=_semver)
    id: str = attrs.field(factory=_new_id, validator=_uuid)
    job_id: str = attrs.field(validator=_not_empty)
    timestamp: datetime = attrs.field(factory=_now, converter=_utc, validator=_reasonable_time)
    sequence_number: int = attrs.field(validator=_positive)
    status: CheckpointStatus = CheckpointStatus.COMPLETED
    metadata: CheckpointMetadata = attrs.Factory(CheckpointMetadata)
    data: CheckpointData = attrs.Factory(CheckpointData)
    checksum: str = attrs.field(default="", validator=_checksum)


for _cls in (
    ResourceSnapshot,
    ErrorRecord,
    ProgressState,
    CheckpointMetadata,
    CheckpointData,
    Checkpoint,
):
    attrs.resolve_types(_cls)


# -- fast structuring -------------------------------------------------------------------
# The generic, detailed cattrs hooks spend most of a large load checking 100k item keys and
# thousands of error records one call at a time. This hook builds CheckpointData directly
# when every value already has its exact type, and otherwise defers to the generated hook,
# so results and error messages are the same either way.


class _Slow(Exception):
    pass


_DATA_KEYS = frozenset(attrs.fields_dict(CheckpointData))
_PROGRESS_KEYS = frozenset(attrs.fields_dict(ProgressState))
_STR_ONLY = {str}


def _str_list(value: Any) -> list[str]:
    if type(value) is not list or (value and set(map(type, value)) != _STR_ONLY):
        raise _Slow
    return value


def _fast_progress(p: Any) -> ProgressState:
    if type(p) is not dict or not p.keys() <= _PROGRESS_KEYS:
        raise _Slow
    current = p.get("current_item")
    total = p.get("total_count", 0)
    pct = p.get("completion_percentage", 0.0)
    if (
        (current is not None and type(current) is not str)
        or type(total) is not int
        or type(pct) not in (int, float)
    ):
        raise _Slow
    return ProgressState(
        current_item=current,
        completed_items=_str_list(p.get("completed_items", [])),
        failed_items=_str_list(p.get("failed_items", [])),
        pending_items=_str_list(p.get("pending_items", [])),
        total_count=total,
        completion_percentage=float(pct),
    )


def _fast_error(e: Any) -> ErrorRecord:
    if type(e) is not dict:
        raise _Slow
    ts, item, kind, message = e["timestamp"], e["item_id"], e["error_type"], e["error_message"]
    retries, resolved = e.get("retry_count", 0), e.get("resolved", False)
    # Four required keys plus the optional ones present: any other key means an unknown one.
    if (
        len(e) != 4 + ("retry_count" in e) + ("resolved" in e)
        or type(ts) is not str
        or type(item) is not str
        or type(kind) is not str
        or type(message) is not str
        or type(retries) is not int
        or type(resolved) is not bool
    ):
        raise _Slow
    return ErrorRecord(
        timestamp=datetime.fromisoformat(ts),
        item_id=item,
        error_type=kind,
        error_message=message,
        retry_count=retries,
        resolved=resolved,
    )


def _fast_data(d: Any) -> CheckpointData:
    if type(d) is not dict or not d.keys() <= _DATA_KEYS:
        raise _Slow
    job_state = d.get("job_state", {})
    browser_state = d.get("browser_state")
    errors = d.get("errors", [])
    if (
        type(job_state) is not dict
        or (browser_state is not None and type(browser_state) is not dict)
        or type(errors) is not list
    ):
        raise _Slow
    progress = _fast_progress(d["progress"]) if "progress" in d else ProgressState()
    return CheckpointData(
        job_state=job_state,
        browser_state=browser_state,
        progress=progress,
        errors=[_fast_error(e) for e in errors],
    )


_generic_data_hook = converter.get_structure_hook(CheckpointData)


def _structure_data(d: Any, cls: type) -> CheckpointData:
    try:
        return _fast_data(d)
    except Exception:
        return _generic_data_hook(d, cls)  # type: ignore[no-any-return]


converter.register_structure_hook(CheckpointData, _structure_data)


# -- keys -------------------------------------------------------------------------------


def _aesgcm(key: bytes, error: type[CheckpointError]) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise error(
            "checkpoint encryption needs the optional 'cryptography' package: "
            "pip install 'scorewise[crypto]'"
        ) from None
    return AESGCM(key)


def check_key(key: bytes) -> None:
    """Raise ``CheckpointKeyError`` unless ``key`` is 32 bytes and encryption is available."""
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
        raise CheckpointKeyError(f"checkpoint key must be {KEY_SIZE} bytes, got {got}")
    _aesgcm(bytes(key), CheckpointKeyError)


def _key_id(key: bytes) -> bytes:
    return hmac.new(key, b"scorewise checkpoint key id", hashlib.sha256).digest()[:_KEY_ID_SIZE]


def generate_key() -> str:
    """A new random key as base64 text, suitable for ``SCOREWISE_CHECKPOINT_KEY``."""
    return base64.b64encode(os.urandom(KEY_SIZE)).decode()


def _parse_key(text: str, source: str) -> bytes:
    text = text.strip()
    key: bytes | None = None
    if re.fullmatch(r"[0-9A-Fa-f]{64}", text):
        key = bytes.fromhex(text)
    else:
        for alt in (None, b"-_"):
            try:
                candidate = base64.b64decode(text, altchars=alt, validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(candidate) == KEY_SIZE:
                key = candidate
                break
    if key is None:
        raise CheckpointKeyError(
            f"{source} is not a valid checkpoint key: expected {KEY_SIZE} bytes written as "
            f"64 hex digits or base64 text, got {len(text)} characters"
        )
    return key


def load_key(env_var: str = KEY_ENV_VAR, key_file: str | Path | None = None) -> bytes | None:
    """The checkpoint key from ``key_file`` if given, else from ``env_var``; ``None`` if unset.

    The text is 64 hex digits or base64 (standard or URL-safe) of 32 bytes; surrounding
    whitespace is ignored. Raises ``CheckpointKeyError`` for unreadable or malformed keys
    (the message never repeats the key text).
    """
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CheckpointKeyError(f"cannot read key file {key_file}: {reason}") from None
        return _parse_key(text, f"key file {key_file}")
    text = os.environ.get(env_var, "")
    if not text.strip():
        return None
    return _parse_key(text, env_var)


# -- encoding ---------------------------------------------------------------------------


def _canonical(content: dict[str, Any]) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def encode(cp: Checkpoint, *, gzip: bool = False, key: bytes | None = None) -> bytes:
    """File bytes for ``cp`` (see the module docstring); raises ``CheckpointCreationError``.

    The version written is always ``SCHEMA_VERSION`` and the checksum is computed afresh.
    """
    content = converter.unstructure(cp)
    content.pop("checksum", None)
    content["version"] = SCHEMA_VERSION
    try:
        body = _canonical(content)
    except orjson.JSONEncodeError as exc:
        raise CheckpointCreationError(f"checkpoint cannot be written as JSON: {exc}") from exc
    digest = hashlib.sha256(body).hexdigest()
    raw = b'%s,"checksum":"%s"}' % (body[:-1], digest.encode())
    if gzip:
        raw = gzip_mod.compress(raw, compresslevel=6, mtime=0)
    if key is not None:
        try:
            check_key(key)
        except CheckpointKeyError as exc:
            raise CheckpointCreationError(str(exc)) from None
        header = ENCRYPTED_MAGIC + _key_id(key)
        nonce = os.urandom(_NONCE_SIZE)
        sealed = _aesgcm(key, CheckpointCreationError).encrypt(nonce, raw, header)
        raw = header + nonce + sealed
    return raw


# -- decoding ---------------------------------------------------------------------------


def _decrypt(raw: bytes, key: bytes | None) -> bytes:
    if key is None:
        raise CheckpointKeyError(
            f"checkpoint is encrypted and no key was given (set {KEY_ENV_VAR})"
        )
    check_key(key)
    if len(raw) < _HEADER_SIZE + _TAG_SIZE:
        raise CheckpointCorruptionError(
            f"encrypted checkpoint is truncated: {len(raw)} bytes, "
            f"at least {_HEADER_SIZE + _TAG_SIZE} expected"
        )
    header = raw[: len(ENCRYPTED_MAGIC) + _KEY_ID_SIZE]
    stored_id = header[len(ENCRYPTED_MAGIC) :]
    if not hmac.compare_digest(stored_id, _key_id(key)):
        raise CheckpointKeyError(
            f"checkpoint was encrypted with a different key (key id {stored_id.hex()}, "
            f"the given key has id {_key_id(key).hex()})"
        )
    nonce = raw[len(header) : _HEADER_SIZE]
    from cryptography.exceptions import InvalidTag

    try:
        return bytes(_aesgcm(key, CheckpointKeyError).decrypt(nonce, raw[_HEADER_SIZE:], header))
    except InvalidTag:
        raise CheckpointCorruptionError(
            "encrypted checkpoint failed authentication (AES-GCM tag mismatch): the file is damaged"
        ) from None


def _gunzip(raw: bytes) -> bytes:
    try:
        return gzip_mod.decompress(raw)
    except EOFError:
        raise CheckpointCorruptionError("gzip data is truncated") from None
    except (OSError, zlib.error) as exc:
        raise CheckpointCorruptionError(f"gzip data is damaged: {exc}") from None


def _supported() -> tuple[int, int, int]:
    m = _VERSION_RE.fullmatch(SCHEMA_VERSION)
    assert m is not None
    return int(m[1]), int(m[2]), int(m[3])


def _check_version(doc: dict[str, Any]) -> tuple[int, int, int]:
    version = doc.get("version")
    if version is None:
        raise CheckpointCorruptionError("wrong structure: version is missing")
    m = _VERSION_RE.fullmatch(version) if isinstance(version, str) else None
    if m is None:
        raise CheckpointCorruptionError(
            f"wrong structure: version {version!r} is not a semantic version"
        )
    parsed = int(m[1]), int(m[2]), int(m[3])
    major = _supported()[0]
    if parsed[0] > major:
        raise CheckpointVersionError(
            f"checkpoint schema {version} is newer than this program supports "
            f"({major}.x); upgrade scorewise"
        )
    return parsed


def _check_checksum(payload: bytes, doc: dict[str, Any]) -> None:
    stored = doc.get("checksum")
    if not isinstance(stored, str) or not _HEX64_RE.fullmatch(stored):
        what = "missing" if stored is None else f"not a SHA-256 hex digest: {stored!r}"
        raise CheckpointCorruptionError(f"wrong structure: checksum is {what}")
    # Fast path: the writer's layout is "<canonical JSON minus its closing brace>,
    # "checksum":"..."}", so the canonical bytes are already here and need no re-encoding.
    tail = b',"checksum":"%s"}' % stored.encode()
    if payload.endswith(tail):
        digest = hashlib.sha256(memoryview(payload)[: -len(tail)])
        digest.update(b"}")
        if hmac.compare_digest(digest.hexdigest(), stored):
            return
    content = {k: v for k, v in doc.items() if k != "checksum"}
    if not hmac.compare_digest(hashlib.sha256(_canonical(content)).hexdigest(), stored):
        raise CheckpointCorruptionError(
            "checksum mismatch: the content does not hash to the stored SHA-256 "
            "(the file is damaged or was edited)"
        )


def _open(raw: bytes, key: bytes | None) -> tuple[dict[str, Any], tuple[int, int, int]]:
    payload = _decrypt(raw, key) if raw.startswith(ENCRYPTED_MAGIC) else raw
    if payload.startswith(_GZIP_MAGIC):
        payload = _gunzip(payload)
    if not payload:
        raise CheckpointCorruptionError("file is empty")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CheckpointCorruptionError(f"not valid JSON: {exc.msg} at byte {exc.pos}") from None
    if not isinstance(doc, dict):
        raise CheckpointCorruptionError(
            f"wrong structure: expected a JSON object, got {type(doc).__name__}"
        )
    version = _check_version(doc)
    _check_checksum(payload, doc)
    return doc, version


def verify(raw: bytes, *, key: bytes | None = None) -> dict[str, Any]:
    """Check integrity only (decrypt, decompress, parse, version, checksum); no objects built.

    Returns the verified plain document. Raises like ``decode``, except that a wrong
    structure inside an intact file goes unnoticed.
    """
    return _open(raw, key)[0]


def _prune(data: Any, tp: Any) -> Any:
    """``data`` without the keys ``tp`` (an attrs class, or a list/optional of one) lacks."""
    if attrs.has(tp):
        if not isinstance(data, dict):
            return data
        fields = attrs.fields_dict(tp)
        return {k: _prune(v, fields[k].type) for k, v in data.items() if k in fields}
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list and args and attrs.has(args[0]) and isinstance(data, list):
        return [_prune(item, args[0]) for item in data]
    inner = [a for a in args if attrs.has(a)]
    if inner and len(args) == 2 and type(None) in args:
        return _prune(data, inner[0])
    return data


def decode(raw: bytes, *, key: bytes | None = None) -> Checkpoint:
    """The checkpoint in file bytes ``raw`` (plain, gzipped or encrypted, by magic bytes).

    Raises ``CheckpointCorruptionError``, ``CheckpointVersionError`` or
    ``CheckpointKeyError`` (see the module docstring).
    """
    doc, version = _open(raw, key)
    supported = _supported()
    if version[0] == supported[0] and version[1] > supported[1]:
        doc = _prune(doc, Checkpoint)
    try:
        return structure(doc, Checkpoint, "checkpoint")
    except ConfigError as exc:
        raise CheckpointCorruptionError("wrong structure: " + "; ".join(exc.errors)) from None
