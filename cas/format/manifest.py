"""The manifest: one registered version of a model, as JSON in the registry.

A manifest lists files (relative POSIX path, size, executable bit, SHA-256 and the id of the
file's chunk list) and metadata. It never lists chunks, so it stays small whatever the file
sizes. Decoding validates everything a later step trusts: schema name and version, model name,
every path (see :mod:`cas.names`), every hash's length and alphabet, and the total size.

Evolution (``docs/format.md``, "Evolution"): fields added later carry defaults, so an older
manifest decodes in a newer build; fields this build does not know are accepted (and kept by
:func:`cas.annotate` when it rewrites a manifest), so a newer host's metadata never makes this
one refuse a manifest. What a reader must understand to use a manifest correctly is listed in
``requires``; a feature named there that this build does not know is refused with ``E_FORMAT``,
as is a manifest version it does not know. Version 2 made the whole-file BLAKE3 optional;
version 3 added ``requires``, provenance and the rule above.
"""

from __future__ import annotations

import math

import msgspec

from cas.errors import ArgsError, FormatError, SchemaError
from cas.ids import is_hex
from cas.names import check_unique_paths, validate_model_name, validate_rel_path
from cas.versions import is_version_id

SCHEMA = "cas.manifest"
VERSION = 3
SUPPORTED_VERSIONS = frozenset({1, 2, 3})
#: Features a manifest may list in ``requires`` that this build understands (none yet: the
#: list exists so that a later feature can make older readers refuse instead of misread).
KNOWN_FEATURES: frozenset[str] = frozenset()
FORMATS = ("safetensors", "gguf", "pytorch", "onnx", "other")


class FileEntry(msgspec.Struct, frozen=True):
    """One file of a model version."""

    path: str
    size: int
    sha256: str
    chunks: str
    executable: bool = False
    #: BLAKE3 of the whole file: required in version 1 manifests, left out from version 2 on;
    #: checked by ``verify`` when present.
    #: The file's identity inside the store is its chunk list id (a BLAKE3 tree over the
    #: chunks); outside it, SHA-256 (what Hugging Face and git-lfs publish).
    blake3: str | None = None
    #: Chunk-list ids of the earlier files that this file's derived chunks (codec 3) need,
    #: directly or through their own bases, sorted; ``[]`` when none. ``None``: not recorded
    #: (a writer older than the object graph); the graph then reads the edges from the packs.
    bases: list[str] | None = None


class Provenance(msgspec.Struct, frozen=True, omit_defaults=True):
    """How the weights were made, for reproducing or auditing them. All optional."""

    #: Training run id (an experiment tracker's run, a job id).
    run_id: str | None = None
    #: Datasets trained on, each as ``NAME[@REVISION]``.
    datasets: list[str] = []
    #: Revision of the training code (a git commit, a tag).
    code_revision: str | None = None
    #: Random seed of the run.
    seed: int | None = None
    #: Environment of the run: library versions, hardware, container image.
    environment: dict[str, str] = {}


class Metadata(msgspec.Struct, frozen=True, omit_defaults=True):
    """What is known about a model version. Detected fields come from file headers."""

    format: str = "other"
    architecture: str | None = None
    parameter_count: int | None = None
    dtypes: list[str] = []
    quantization: str | None = None
    role: str | None = None
    base_model: str | None = None
    #: Lineage: versions this one was derived from, as ``NAME@<commit>``.
    parents: list[str] = []
    metrics: dict[str, float] = {}
    license: str | None = None
    source: str | None = None
    created_at: str = ""
    created_on: str = ""
    #: Free ``--meta key=value`` pairs.
    extra: dict[str, str] = {}
    provenance: Provenance = Provenance()


class Manifest(msgspec.Struct, frozen=True):
    """A registered version: the unit stored in each registry commit."""

    name: str
    seq: int
    files: list[FileEntry]
    total_size: int
    metadata: Metadata = Metadata()
    schema: str = SCHEMA
    version: int = VERSION
    #: Features a reader must understand to use this manifest (see KNOWN_FEATURES).
    requires: list[str] = []
    #: The version's stable id (32 lowercase hex; 40 for a version registered before ids
    #: existed, whose id is its add commit), equal to its add commit's ``Cas-Id``. None in
    #: manifests written before ids.
    id: str | None = None

    def encode(self) -> bytes:
        """Canonical JSON: fixed key order, two-space indent, trailing newline; ``id`` is
        left out when None (a manifest from before ids keeps its bytes when rewritten)."""
        doc: object = self
        if self.id is None:
            doc = msgspec.to_builtins(self)
            del doc["id"]  # type: ignore[attr-defined]
        return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse and validate manifest JSON.

        Raises:
            SchemaError: invalid JSON, unknown schema, a malformed version, or any invalid field.
            FormatError: a newer manifest version, or a required feature this build lacks.
        """
        try:
            head = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"manifest is not valid JSON: {exc}") from None
        except RecursionError:
            raise SchemaError("manifest JSON nests too deeply") from None
        if not isinstance(head, dict) or head.get("schema") != SCHEMA:
            raise SchemaError("not a cas manifest (schema field missing or wrong)")
        version = head.get("version")
        newer = type(version) is int and version > max(SUPPORTED_VERSIONS)
        # The type first: a list or an object is unhashable, and True == 1.
        if type(version) is not int or version not in SUPPORTED_VERSIONS:
            raise (FormatError if newer else SchemaError)(
                f"manifest version {head.get('version')!r} is not supported by this cas "
                f"(supports {sorted(SUPPORTED_VERSIONS)}); upgrade cas"
            )
        requires = head.get("requires", [])
        if not isinstance(requires, list) or not all(isinstance(f, str) for f in requires):
            raise SchemaError("manifest: requires must be a list of strings")
        unknown = sorted(set(requires) - KNOWN_FEATURES)
        if unknown:
            raise FormatError(f"manifest requires features this cas does not know: "
                              f"{', '.join(map(str, unknown))}; upgrade cas")
        try:
            manifest = msgspec.convert(head, cls)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"manifest: {exc}") from None
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Raise SchemaError unless every field is consistent."""
        try:
            validate_model_name(self.name)
        except ArgsError as exc:
            raise SchemaError(f"manifest: {exc.message}") from None
        if self.seq < 1:
            raise SchemaError(f"manifest: sequence number {self.seq} < 1")
        if self.id is not None and not is_version_id(self.id):
            raise SchemaError("manifest: id is not 32 or 40 lowercase hex")
        for f in self.files:
            validate_rel_path(f.path)
            if f.size < 0:
                raise SchemaError(f"manifest: {f.path}: negative size")
            for field, value in (("sha256", f.sha256), ("blake3", f.blake3), ("chunks", f.chunks)):
                if value is not None and not is_hex(value):
                    raise SchemaError(f"manifest: {f.path}: {field} is not 64 lowercase hex")
            if f.blake3 is None and self.version == 1:
                raise SchemaError(f"manifest: {f.path}: blake3 is required in version 1")
            if f.bases is not None:
                if not all(is_hex(b) for b in f.bases):
                    raise SchemaError(f"manifest: {f.path}: a base is not 64 lowercase hex")
                if f.bases != sorted(set(f.bases)):
                    raise SchemaError(f"manifest: {f.path}: bases are not sorted and unique")
        check_unique_paths(f.path for f in self.files)
        if [f.path for f in self.files] != sorted(f.path for f in self.files):
            raise SchemaError("manifest: files are not sorted by path")
        total = sum(f.size for f in self.files)
        if total != self.total_size:
            raise SchemaError(f"manifest: total_size {self.total_size} != sum of sizes {total}")
        if self.metadata.format not in FORMATS:
            raise SchemaError(f"manifest: unknown format {self.metadata.format!r}")
        for key, value in self.metadata.metrics.items():
            # JSON has no infinity or NaN: such a metric would be written as null and the
            # manifest could not be read back.
            if not math.isfinite(value):
                raise SchemaError(f"manifest: metric {key!r} is not a finite number")

    def same_content(self, other: Manifest) -> bool:
        """True if both versions hold the same files with the same bytes and modes."""
        return _content_key(self) == _content_key(other)


def _content_key(m: Manifest) -> list[tuple[str, str, int, bool]]:
    return [(f.path, f.sha256, f.size, f.executable) for f in m.files]


def json_schema() -> dict[str, object]:
    """The published JSON Schema of the manifest."""
    return msgspec.json.schema(Manifest)
