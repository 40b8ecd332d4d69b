"""The checkpoint record and its file format: round trips, integrity, versions and keys."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import snapshot
from actors.snapshot import (
    ENCRYPTED_MAGIC,
    Checkpoint,
    CheckpointCorruptionError,
    CheckpointCreationError,
    CheckpointData,
    CheckpointKeyError,
    CheckpointMetadata,
    CheckpointStatus,
    CheckpointValidationError,
    CheckpointVersionError,
    ErrorRecord,
    ProgressState,
    ResourceSnapshot,
    decode,
    encode,
    generate_key,
    load_key,
    verify,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
WHEN = datetime(2025, 1, 27, 15, 30, tzinfo=UTC)


def sample(seq: int = 1, items: int = 20) -> Checkpoint:
    keys = [f"match-{i:06d}/summary" for i in range(1, items + 1)]
    failed = keys[::5]
    return Checkpoint(
        id="0b7e2c52-4a8f-4d6e-9a57-0e6f3c3f8e11",
        job_id="league-2026",
        timestamp=WHEN,
        sequence_number=seq,
        metadata=CheckpointMetadata(
            total_items=items,
            completed_items=items - len(failed),
            failed_items=len(failed),
            processing_time=12.5,
            browser_sessions=["b-1"],
            system_resources=ResourceSnapshot(
                timestamp=WHEN,
                memory_usage=512,
                cpu_usage=37.5,
                disk_usage=2048,
                network_connections=9,
                process_count=4,
            ),
        ),
        data=CheckpointData(
            job_state={"cursor": 7, "league": "premier", "nested": {"a": [1, 2.5, None]}},
            browser_state={"cookies": [{"name": "sid", "value": "s3cr3t"}], "origins": []},
            progress=ProgressState(
                current_item=keys[-1],
                completed_items=[k for k in keys if k not in failed],
                failed_items=failed,
                pending_items=[],
                total_count=items,
                completion_percentage=100.0,
            ),
            errors=[
                ErrorRecord(
                    timestamp=WHEN,
                    item_id=k,
                    error_type="TimeoutError",
                    error_message="page.goto: Timeout 30000ms exceeded",
                    retry_count=3,
                )
                for k in failed
            ],
        ),
    )


def same(a: Checkpoint, b: Checkpoint) -> bool:
    return attrs.evolve(a, checksum="") == attrs.evolve(b, checksum="")


def document(**changes: Any) -> dict[str, Any]:
    """A sample checkpoint as plain data (no checksum), with top-level ``changes``."""
    doc = orjson.loads(encode(sample()))
    del doc["checksum"]
    doc.update(changes)
    return doc


def sealed(doc: dict[str, Any]) -> bytes:
    """``doc`` as file bytes with a checksum computed by the documented rule."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps({**doc, "checksum": digest}, indent=2).encode()


def test_plain_round_trip_and_layout() -> None:
    """A plain file is the seeds' JSON with the checksum as the last key."""
    cp = sample()
    raw = encode(cp)
    doc = json.loads(raw)
    assert list(doc)[-1] == "checksum"
    assert doc["version"] == "1.0.0"
    assert doc["timestamp"] == "2025-01-27T15:30:00+00:00"
    assert doc["status"] == "completed"
    back = decode(raw)
    assert same(back, cp)
    assert back.checksum == doc["checksum"]


def test_checksum_is_sha256_of_canonical_content() -> None:
    """The checksum is SHA-256 over the sorted compact JSON of everything but itself."""
    doc = json.loads(encode(sample()))
    stored = doc.pop("checksum")
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == stored


def test_reformatted_file_still_verifies() -> None:
    """A file re-indented by hand (same content) still loads."""
    raw = encode(sample())
    pretty = json.dumps(json.loads(raw), indent=4).encode()
    assert same(decode(pretty), sample())


def test_gzip_round_trip() -> None:
    """A gzipped checkpoint is recognised by its magic bytes."""
    raw = encode(sample(), gzip=True)
    assert raw[:2] == b"\x1f\x8b"
    assert same(decode(raw), sample())
    assert json.loads(gzip.decompress(raw))["sequence_number"] == 1


def test_encrypted_round_trip_hides_the_content() -> None:
    """An encrypted checkpoint starts with the magic and does not show its secrets."""
    for zipped in (False, True):
        raw = encode(sample(), gzip=zipped, key=KEY)
        assert raw.startswith(ENCRYPTED_MAGIC)
        assert b"s3cr3t" not in raw
        assert same(decode(raw, key=KEY), sample())


def test_encode_ignores_a_stale_checksum_and_writes_the_current_version() -> None:
    """encode recomputes the checksum and stamps the schema version."""
    old = attrs.evolve(sample(), checksum="0" * 64, version="1.0.0")
    assert decode(encode(old)).checksum != "0" * 64


def test_checksum_mismatch() -> None:
    """An edited value with a stale checksum is corruption."""
    doc = json.loads(encode(sample()))
    doc["sequence_number"] = 2
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(json.dumps(doc).encode())
    assert str(info.value) == (
        "checksum mismatch: the content does not hash to the stored SHA-256 "
        "(the file is damaged or was edited)"
    )


def test_bit_flip_in_the_middle_of_a_real_file(tmp_path: Path) -> None:
    """Flipping one bit in the middle of a file on disk is detected."""
    path = tmp_path / "cp.json"
    path.write_bytes(encode(sample(items=200)))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    while not chr(data[middle]).isalnum():
        middle += 1
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(path.read_bytes())
    assert str(info.value).startswith("checksum mismatch: ")


def test_bit_flip_in_an_encrypted_file_is_corruption() -> None:
    """A damaged ciphertext fails authentication and says so."""
    data = bytearray(encode(sample(), key=KEY))
    data[len(data) // 2] ^= 0x80
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(bytes(data), key=KEY)
    assert str(info.value) == (
        "encrypted checkpoint failed authentication (AES-GCM tag mismatch): the file is damaged"
    )


def test_truncated_plain_file() -> None:
    """A plain file cut short is invalid JSON, with the position."""
    raw = encode(sample())
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(raw[:100])
    assert str(info.value) == "not valid JSON: unexpected end of data at byte 100"


def test_truncated_gzip_file() -> None:
    """A gzip stream cut short is reported as truncated."""
    raw = encode(sample(), gzip=True)
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(raw[: len(raw) // 2])
    assert str(info.value) == "gzip data is truncated"


def test_damaged_gzip_file() -> None:
    """A gzip stream with a bad CRC is reported as damaged."""
    raw = bytearray(encode(sample(), gzip=True))
    raw[-8] ^= 0xFF
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(bytes(raw))
    assert str(info.value) == "gzip data is damaged: CRC check failed"


def test_truncated_encrypted_file() -> None:
    """An encrypted file shorter than its header is truncated."""
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(encode(sample(), key=KEY)[:30], key=KEY)
    assert str(info.value) == "encrypted checkpoint is truncated: 30 bytes, at least 41 expected"


def test_invalid_json_empty_and_not_an_object() -> None:
    """Garbage, an empty file and a JSON array are each corruption with their own reason."""
    cases = {
        b"{not json}": "not valid JSON: unexpected character, expected a string key at byte 1",
        b"": "file is empty",
        b"[1, 2]": "wrong structure: expected a JSON object, got list",
        b'{"version": "1.0.0"}': "wrong structure: checksum is missing",
        b'{"version": 1}': "wrong structure: version 1 is not a semantic version",
    }
    for raw, message in cases.items():
        with pytest.raises(CheckpointCorruptionError) as info:
            decode(raw)
        assert str(info.value) == message


def test_wrong_structure_names_the_field() -> None:
    """A well-formed file with a bad field says which one."""
    doc = document()
    doc["metadata"]["failed_items"] = -1
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(sealed(doc))
    assert str(info.value) == (
        "wrong structure: checkpoint.metadata: failed_items must not be negative, got -1"
    )


def test_loosely_typed_values_load_like_the_generic_converter() -> None:
    """Values that are not of the exact type take the generic path with the same result."""
    doc = document()
    doc["data"]["errors"][0]["retry_count"] = "3"
    doc["data"]["progress"]["completion_percentage"] = 100
    cp = decode(sealed(doc))
    assert cp.data.errors[0].retry_count == 3
    assert cp.data.progress.completion_percentage == 100.0
    assert same(cp, sample())


def test_bad_error_record_is_named_by_path() -> None:
    """A missing or unknown field inside an error record is reported with its path."""
    doc = document()
    del doc["data"]["errors"][1]["item_id"]
    doc["data"]["errors"][2]["screenshot"] = "s.png"
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(sealed(doc))
    assert str(info.value) == (
        "wrong structure: checkpoint.data.errors[1].item_id: required field missing; "
        "checkpoint.data.errors[2]: unknown field(s): screenshot"
    )


def test_unknown_field_in_the_same_minor_is_corruption() -> None:
    """An unknown key in a file of this very version is not silently dropped."""
    with pytest.raises(CheckpointCorruptionError) as info:
        decode(sealed(document(surprise=1)))
    assert str(info.value) == "wrong structure: checkpoint: unknown field(s): surprise"


def test_future_major_version() -> None:
    """A newer major schema is a version error telling the user to upgrade."""
    with pytest.raises(CheckpointVersionError) as info:
        decode(sealed(document(version="2.0.0", shiny={"new": True})))
    assert str(info.value) == (
        "checkpoint schema 2.0.0 is newer than this program supports (1.x); upgrade scorewise"
    )


def test_newer_minor_loads_ignoring_unknown_fields() -> None:
    """A 1.x file with a newer minor loads; fields unknown here are ignored at every level."""
    doc = document(version="1.4.2", labels=["x"])
    doc["data"]["errors"][0]["screenshot"] = "s.png"
    doc["metadata"]["system_resources"]["gpu_usage"] = 3.0
    cp = decode(sealed(doc))
    assert cp.version == "1.4.2"
    assert same(attrs.evolve(cp, version="1.0.0"), sample())


def test_older_minor_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of older minor versions load in a program of a newer minor."""
    monkeypatch.setattr(snapshot, "SCHEMA_VERSION", "1.3.0")
    for version in ("1.0.0", "1.2.9"):
        cp = decode(sealed(document(version=version)))
        assert cp.version == version
        assert same(attrs.evolve(cp, version="1.0.0"), sample())
    assert json.loads(encode(sample()))["version"] == "1.3.0"


def test_wrong_key() -> None:
    """A different key is a key error naming both key ids, not corruption."""
    raw = encode(sample(), key=KEY)
    with pytest.raises(CheckpointKeyError) as info:
        decode(raw, key=OTHER_KEY)
    assert str(info.value) == (
        f"checkpoint was encrypted with a different key (key id {raw[5:13].hex()}, "
        f"the given key has id {snapshot._key_id(OTHER_KEY).hex()})"
    )


def test_missing_key() -> None:
    """An encrypted file without a key asks for one."""
    with pytest.raises(CheckpointKeyError) as info:
        decode(encode(sample(), key=KEY))
    assert str(info.value) == (
        "checkpoint is encrypted and no key was given (set SCOREWISE_CHECKPOINT_KEY)"
    )


def test_short_key() -> None:
    """A key of the wrong size is refused when encoding and decoding."""
    with pytest.raises(CheckpointCreationError) as info:
        encode(sample(), key=b"short")
    assert str(info.value) == "checkpoint key must be 32 bytes, got 5 bytes"
    with pytest.raises(CheckpointKeyError) as info2:
        decode(encode(sample(), key=KEY), key=b"short")
    assert str(info2.value) == "checkpoint key must be 32 bytes, got 5 bytes"


def test_missing_cryptography_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the optional package, encryption fails with an install hint."""
    raw = encode(sample(), key=KEY)
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    hint = (
        "checkpoint encryption needs the optional 'cryptography' package: "
        "pip install 'scorewise[crypto]'"
    )
    with pytest.raises(CheckpointKeyError) as info:
        decode(raw, key=KEY)
    assert str(info.value) == hint
    with pytest.raises(CheckpointCreationError) as info2:
        encode(sample(), key=KEY)
    assert str(info2.value) == hint
    assert same(decode(encode(sample())), sample())


def test_unserialisable_job_state() -> None:
    """State that JSON cannot hold fails at encode time with a creation error."""
    cp = attrs.evolve(sample(), data=CheckpointData(job_state={"when": object()}))
    with pytest.raises(CheckpointCreationError) as info:
        encode(cp)
    assert str(info.value) == (
        "checkpoint cannot be written as JSON: Type is not JSON serializable: object"
    )


def test_verify_returns_the_plain_document() -> None:
    """verify checks integrity and returns plain data without building objects."""
    doc = verify(encode(sample(), gzip=True))
    assert doc["id"] == "0b7e2c52-4a8f-4d6e-9a57-0e6f3c3f8e11"


def test_validation_on_construction() -> None:
    """Bad values are refused when a record is built, with the field named."""
    cases: list[tuple[Any, str]] = [
        (
            lambda: Checkpoint(job_id="j", sequence_number=0),
            "sequence_number must be at least 1, got 0",
        ),
        (
            lambda: Checkpoint(job_id="j", sequence_number=1, id="nope"),
            "id must be a UUID, got 'nope'",
        ),
        (
            lambda: Checkpoint(job_id="j", sequence_number=1, timestamp=datetime(2025, 1, 1)),
            "timestamp must be timezone-aware, got datetime.datetime(2025, 1, 1, 0, 0)",
        ),
        (
            lambda: Checkpoint(
                job_id="j", sequence_number=1, timestamp=datetime(1990, 1, 1, tzinfo=UTC)
            ),
            "timestamp must be between 2000 and 2099, got 1990-01-01T00:00:00+00:00",
        ),
        (
            lambda: Checkpoint(job_id="j", sequence_number=1, version="1.0"),
            "version must be a semantic version like 1.0.0, got '1.0'",
        ),
        (lambda: Checkpoint(job_id="", sequence_number=1), "job_id must not be empty"),
        (
            lambda: ProgressState(completion_percentage=100.5),
            "completion_percentage must be between 0 and 100, got 100.5",
        ),
        (
            lambda: ErrorRecord(
                timestamp=WHEN, item_id="a", error_type="E", error_message="m", retry_count=-1
            ),
            "retry_count must not be negative, got -1",
        ),
    ]
    for build, message in cases:
        with pytest.raises(CheckpointValidationError) as info:
            build()
        assert str(info.value) == message
        assert isinstance(info.value, ValueError)


def test_timestamps_are_stored_in_utc() -> None:
    """An aware timestamp in another zone is converted to UTC."""
    paris = timezone(timedelta(hours=1))
    cp = Checkpoint(
        job_id="j", sequence_number=1, timestamp=datetime(2025, 1, 27, 16, 30, tzinfo=paris)
    )
    assert cp.timestamp == WHEN
    assert cp.timestamp.tzinfo is UTC
    assert cp.status is CheckpointStatus.COMPLETED


def test_load_key_from_env_in_hex_and_base64(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key may be hex or base64 (standard or URL-safe); unset means no key."""
    monkeypatch.delenv("SCOREWISE_CHECKPOINT_KEY", raising=False)
    assert load_key() is None
    for text in (KEY.hex(), base64.b64encode(KEY).decode(), base64.urlsafe_b64encode(KEY).decode()):
        monkeypatch.setenv("SCOREWISE_CHECKPOINT_KEY", f"  {text}\n")
        assert load_key() == KEY
    generated = generate_key()
    monkeypatch.setenv("MY_KEY", generated)
    assert load_key("MY_KEY") == base64.b64decode(generated)


def test_load_key_from_a_file(tmp_path: Path) -> None:
    """A key file wins over the environment; a missing file is a clear key error."""
    path = tmp_path / "key"
    path.write_text(KEY.hex() + "\n")
    assert load_key(key_file=path) == KEY
    with pytest.raises(CheckpointKeyError) as info:
        load_key(key_file=tmp_path / "missing")
    assert (
        str(info.value) == f"cannot read key file {tmp_path / 'missing'}: No such file or directory"
    )


def test_bad_key_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Malformed key text is refused without echoing it."""
    monkeypatch.setenv("SCOREWISE_CHECKPOINT_KEY", "hunter2")
    with pytest.raises(CheckpointKeyError) as info:
        load_key()
    assert str(info.value) == (
        "SCOREWISE_CHECKPOINT_KEY is not a valid checkpoint key: expected 32 bytes written as "
        "64 hex digits or base64 text, got 7 characters"
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=30, deadline=None)
@given(
    job_state=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    items=st.lists(st.text(min_size=1, max_size=20), max_size=10),
    zipped=st.booleans(),
)
def test_round_trip_property(job_state: dict[str, Any], items: list[str], zipped: bool) -> None:
    """Any JSON job state and any item keys survive encode and decode."""
    cp = Checkpoint(
        job_id="p",
        sequence_number=3,
        timestamp=WHEN,
        data=CheckpointData(job_state=job_state, progress=ProgressState(completed_items=items)),
    )
    back = decode(encode(cp, gzip=zipped))
    assert same(back, cp)
