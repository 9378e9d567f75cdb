"""The Ollama model store: export a GGUF version into one, and register what one holds.

Layout (``$OLLAMA_MODELS``, else ``~/.ollama/models``), as Ollama's own code writes and reads
it (``manifest/paths.go``, ``manifest/manifest.go``, ``manifest/layer.go``,
``types/model/name.go``, ``server/create.go``, ``server/images.go``)::

    blobs/sha256-<hex>                       content, named by its SHA-256
    manifests/<host>/<namespace>/<model>/<tag>   the model's manifest (JSON)

A name ``MODEL[:TAG]`` is completed with host ``registry.ollama.ai``, namespace ``library``
and tag ``latest``. The manifest is Docker's image manifest v2: a config blob (Ollama's
``ConfigV2`` JSON: format, family, parameter size, file type) and layers, each with a media
type (``application/vnd.ollama.image.model`` for the GGUF weights; ``.template``,
``.system``, ``.params``, ``.license``, ``.messages``, ``.projector``, ``.adapter``), a
digest ``sha256:<hex>`` and a size. JSON is written as Go's ``encoding/json`` writes it
(fields in declaration order, no spaces, ``<>&`` escaped, a trailing newline).

Export (:func:`export_model`): each blob is written as Ollama writes one (a temp named
``sha256-<digits>`` in ``blobs/``, hashed as written, renamed to ``sha256-<hex>``, mode
0644); a blob already there is hashed and reused, never trusted by name. The manifest is
written last, atomically: a manifest present means its blobs are. A crash leaves at most a
temp (Ollama's blob pruning removes it) and blobs no manifest names yet; a re-run completes
the export. A version imported from Ollama keeps its manifest and config bytes, so it goes
back under the same digest.

Import (:func:`import_models`): each manifest (or those the arguments name) becomes a version
of ``<namespace>/<model>`` (``<host>/<namespace>/<model>`` off the default registry) tagged
with the Ollama tag; each blob is checked against its digest before anything is registered
(a model with a missing or damaged blob is skipped with a warning). The layers are registered
as files (``model.gguf``, ``template``, ``params.json``, ``LICENSE``, ...) through a folder
of symlinks to the blobs, so nothing is copied; the chunks deduplicate against everything the
store holds. A manifest registered before (its digest recorded in the version's source) is
not registered again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from cas.errors import (
    ArgsError,
    CasError,
    CasWarning,
    NotFoundError,
    SchemaError,
    VerifyError,
    from_os_error,
)
from cas.exportfile import hash_file, holds, real_dirs, share_sources, stage, temp_path
from cas.fsutil import atomic_write, fsync_dir
from cas.hfcache import recorded_sources
from cas.names import validate_model_name, validate_tag

if TYPE_CHECKING:
    from cas.format.manifest import FileEntry, Manifest
    from cas.store import Progress, Store

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
_IMAGE = "application/vnd.ollama.image."
MEDIA_MODEL = _IMAGE + "model"
#: Layer media type -> the file a registered version holds it as (the first of a kind; more
#: of the same kind get ``-2``, ``-3``... before the suffix). Export maps files back.
LAYER_FILES = {
    MEDIA_MODEL: "model.gguf",
    _IMAGE + "projector": "projector.gguf",
    _IMAGE + "adapter": "adapter.gguf",
    _IMAGE + "template": "template",
    _IMAGE + "system": "system",
    _IMAGE + "license": "LICENSE",
    _IMAGE + "params": "params.json",
    _IMAGE + "messages": "messages.json",
}
_LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "license", "license.txt")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
#: Metadata recorded on an imported version.
META_NAME = "ollama.name"
META_MANIFEST = "ollama.manifest"
META_CONFIG = "ollama.config"
SCHEME = "ollama://"
#: Manifests and config blobs bigger than this are not Ollama's.
MAX_JSON = 1 << 20
#: ``general.file_type`` -> Ollama's ``FileType.String()`` (fs/ggml/type.go).
FILE_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q4_1_F16", "Q4_2", "Q4_3", "Q8_0", "Q5_0",
              "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S",
              "Q5_K_M", "Q6_K", "IQ2_XXS", "IQ2_XS", "Q2_K_S", "IQ3_XS", "IQ3_XXS", "IQ1_S",
              "IQ4_NL", "IQ3_S", "IQ3_M", "IQ2_S", "IQ2_M", "IQ4_XS", "IQ1_M", "BF16",
              "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "MXFP4_MOE", "NVFP4",
              "Q1_0")
#: Ollama's own temp and removed names: unused file types print as "unknown".
_UNNAMED_FILE_TYPES = frozenset({4, 5, 6, 33, 34, 35})


def default_models_dir() -> Path:
    """``$OLLAMA_MODELS``, else ``~/.ollama/models`` (read at call time)."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


# -- names --------------------------------------------------------------------------------


def _valid_part(kind: str, s: str) -> bool:
    """``isValidPart`` of types/model/name.go."""
    if not 1 <= len(s) <= (350 if kind == "host" else 80):
        return False
    for i, c in enumerate(s):
        alnum = c.isascii() and (c.isalnum() or c == "_")
        if i == 0:
            if not alnum:
                return False
        elif c in "_-":
            continue
        elif c == ".":
            if kind == "namespace":
                return False
        elif c == ":":
            if kind != "host":
                return False
        elif not alnum:
            return False
    return True


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> OllamaName:
        """``ParseName``: ``[[HOST/]NAMESPACE/]MODEL[:TAG]`` completed with the defaults.

        Raises:
            ArgsError: a part is missing or not valid for Ollama.
        """
        s, tag = text, ""
        if s.rfind(":") > s.rfind("/"):
            s, _, tag = s.rpartition(":")
        parts = s.split("/")
        if len(parts) > 3:
            parts = ["/".join(parts[:-2]), *parts[-2:]]
        host, ns, model = ([DEFAULT_HOST, DEFAULT_NAMESPACE][: 3 - len(parts)] + parts)
        if "://" in host:
            host = host.split("://", 1)[1]
        name = cls(host, ns, model, tag or DEFAULT_TAG)
        name.check(text)
        return name

    def check(self, shown: str) -> None:
        for kind, part in (("host", self.host), ("namespace", self.namespace),
                           ("model", self.model), ("tag", self.tag)):
            if not _valid_part(kind, part):
                raise ArgsError(f"{shown!r} is not an Ollama model name: its {kind} "
                                f"{part!r} is not valid")

    @property
    def rel_path(self) -> str:
        """The manifest's path under ``manifests/`` (``Name.Filepath``)."""
        return f"{self.host}/{self.namespace}/{self.model}/{self.tag}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def short(self) -> str:
        """``DisplayShortest``."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def cas_name(self) -> str:
        """The model name a version imported from this manifest is registered under."""
        base = f"{self.namespace}/{self.model}"
        if self.host.lower() != DEFAULT_HOST:
            base = f"{self.host.replace(':', '-')}/{base}"
        return base


def default_name(model_name: str) -> OllamaName:
    """The Ollama name of a cas model by default: its last two segments as namespace and
    model (``library`` for a one-segment name), tag ``latest``."""
    parts = model_name.split("/")
    ns = parts[-2] if len(parts) > 1 else DEFAULT_NAMESPACE
    name = OllamaName(DEFAULT_HOST, ns, parts[-1], DEFAULT_TAG)
    try:
        name.check(model_name)
    except ArgsError as exc:
        raise ArgsError(f"{exc.message}; give --as MODEL:TAG") from None
    return name


# -- JSON as Go writes it -----------------------------------------------------------------


def go_json(value: Any) -> bytes:
    """``json.NewEncoder(w).Encode(value)``: compact, HTML characters escaped, a newline.
    Dicts keep their order (struct fields in declaration order); maps must be given sorted."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                   ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(c, esc)
    return text.encode() + b"\n"


def human_number(n: int) -> str:
    """``format.HumanNumber``: 22.71M, 8B, 137K."""
    for unit, div, frac in (("B", 10**9, 1), ("M", 10**6, 2)):
        if n >= div:
            v = n / div
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.{frac}f}{unit}"
    if n >= 1000:
        return f"{round(n / 1000):.0f}K"
    return str(n)


def file_type_name(value: int | None) -> str:
    """``FileType.String()``; a missing or zero ``general.file_type`` (F32 included) is
    "unknown", as Ollama reads it (``KV.FileType`` takes only values above zero)."""
    if value is not None and 0 < value < len(FILE_TYPES) and value not in _UNNAMED_FILE_TYPES:
        return FILE_TYPES[value]
    return "unknown"


# -- GGUF facts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GgufFacts:
    architecture: str
    file_type: int | None
    parameter_count: int


_GGUF_UINTS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


def _kv_value(raw: bytes) -> Any:
    (kind,) = struct.unpack_from("<I", raw)
    if kind in _GGUF_UINTS:
        return struct.unpack_from(_GGUF_UINTS[kind], raw, 4)[0]
    if kind == 8:
        (n,) = struct.unpack_from("<Q", raw, 4)
        return raw[12 : 12 + n].decode("utf-8", "replace")
    return None


def gguf_facts(store: Store, entry: FileEntry) -> GgufFacts:
    """Architecture, ``general.file_type`` and parameter count (the sum of the tensors'
    elements, as Ollama counts them) of a stored GGUF file; only its header is read, each
    chunk verified.

    Raises:
        SchemaError: not a GGUF file, or a malformed header.
        NotFoundError | VerifyError: a chunk of the header is missing or damaged.
    """
    from cas.ids import parse_hex
    from cas.metadata import HeaderError, gguf_layout

    clist = parse_hex(entry.chunks, what="chunk list id")
    ranges = store.packs.ranges

    def read_at(offset: int, n: int) -> bytes:
        n = max(0, min(n, entry.size - offset))
        return ranges.read(clist, offset, n)[0] if n else b""

    if read_at(0, 4) != b"GGUF":
        raise SchemaError(f"{entry.path} is not a GGUF file")
    try:
        layout = gguf_layout(read_at, entry.size)
    except HeaderError as exc:
        raise SchemaError(f"{entry.path}: malformed GGUF header ({exc})") from None

    def value(key: str) -> Any:
        span = layout.kv_ranges.get(key)
        return None if span is None else _kv_value(read_at(span[0], min(span[1] - span[0],
                                                                         1 << 16)))

    params = 0
    for t in layout.tensors:
        n = 1
        for d in t.shape:
            n *= d
        params += n
    arch = value("general.architecture")
    ft = value("general.file_type")
    return GgufFacts(arch if isinstance(arch, str) else "unknown",
                     ft if isinstance(ft, int) and ft > 0 else None, params)


def config_blob(facts: GgufFacts) -> bytes:
    """The ``ConfigV2`` blob ``ollama create`` writes for a GGUF model (fields in the
    struct's order, empty ``omitempty`` fields left out; ``os``/``architecture`` are the
    constants its create handler sets)."""
    return go_json({
        "model_format": "gguf",
        "model_family": facts.architecture,
        "model_families": [facts.architecture],
        "model_type": human_number(facts.parameter_count),
        "file_type": file_type_name(facts.file_type),
        "architecture": "amd64",
        "os": "linux",
    })


# -- export -------------------------------------------------------------------------------


class OllamaLayer(msgspec.Struct):
    media_type: str
    digest: str
    size: int
    #: The version's file the layer holds ("" for a blob cas made: config, licence id).
    path: str = ""
    written: bool = False


class OllamaExportResult(msgspec.Struct):
    name: str
    seq: int
    commit: str
    ollama_name: str
    models_dir: str
    manifest: str
    #: SHA-256 of the manifest's bytes: what ``ollama list`` shows as the model's ID.
    digest: str
    layers: list[OllamaLayer]
    blobs_written: int
    blobs_reused: int
    bytes_written: int
    warnings: list[CasWarning] = []


@dataclass
class _Plan:
    config: bytes
    layers: list[tuple[str, FileEntry | bytes]]
    manifest: bytes | None = None


def _file_for(files: dict[str, FileEntry], media: str, i: int) -> FileEntry | None:
    base = LAYER_FILES[media]
    stem, dot, ext = base.partition(".")
    return files.get(base if i == 1 else f"{stem}-{i}{dot}{ext}")


def _plan(store: Store, manifest: Manifest) -> _Plan:
    """Which blobs make the Ollama model of a version, in manifest order."""
    files = {f.path: f for f in manifest.files}
    recorded = _recorded_plan(manifest, files)
    if recorded is not None:
        return recorded
    ggufs = [f for f in manifest.files if f.path.lower().endswith(".gguf")]
    model = files.get("model.gguf")
    if model is None:
        side = {p for m in (_IMAGE + "projector", _IMAGE + "adapter")
                for p in (LAYER_FILES[m],)}
        weights = [f for f in ggufs if f.path not in side]
        if not weights:
            raise ArgsError(f"{manifest.name}@{manifest.seq} has no GGUF file: --ollama "
                            "exports GGUF models")
        if len(weights) > 1:
            raise ArgsError(f"{manifest.name}@{manifest.seq} has {len(weights)} GGUF files "
                            f"({', '.join(f.path for f in weights[:3])}): name the weights "
                            "model.gguf")
        model = weights[0]
    layers: list[tuple[str, FileEntry | bytes]] = [(MEDIA_MODEL, model)]
    for media in LAYER_FILES:
        if media == MEDIA_MODEL:
            continue
        i = 1
        while (f := _file_for(files, media, i)) is not None:
            layers.append((media, f))
            i += 1
        if media == _IMAGE + "license" and i == 1:
            other = next((files[p] for p in _LICENSE_FILES if p in files), None)
            if other is not None:
                layers.append((media, other))
            elif manifest.metadata.license:
                layers.append((media, manifest.metadata.license.encode()))
    try:
        facts = gguf_facts(store, model)
    except SchemaError as exc:
        raise ArgsError(f"{manifest.name}@{manifest.seq}: {exc.message}") from None
    return _Plan(config_blob(facts), layers)


def _recorded_plan(manifest: Manifest, files: dict[str, FileEntry]) -> _Plan | None:
    """The Ollama manifest a version imported from Ollama recorded, if every layer it names
    is a file of the version and its config is recorded too (else None: build anew)."""
    import hashlib

    raw, config = (manifest.metadata.extra.get(k) for k in (META_MANIFEST, META_CONFIG))
    if raw is None or config is None:
        return None
    try:
        doc = _parse_manifest(raw.encode(), "recorded manifest")
    except SchemaError:
        return None
    if doc["config"]["digest"] != "sha256:" + hashlib.sha256(config.encode()).hexdigest():
        return None
    by_sha = {(f.sha256, f.size): f for f in files.values()}
    layers: list[tuple[str, FileEntry | bytes]] = []
    for layer in doc["layers"]:
        f = by_sha.get((layer["digest"][7:].lower(), layer["size"]))
        if f is None:
            return None
        layers.append((layer["mediaType"], f))
    return _Plan(config.encode(), layers, raw.encode())


def export_model(store: Store, spec: str, models_dir: Path | None = None,
                 as_name: str | None = None, *, share: bool = False,
                 accept_license: bool = False, progress: Progress | None = None
                 ) -> OllamaExportResult:
    """Write version ``spec`` (a GGUF model) into the Ollama store at ``models_dir`` as
    ``as_name`` (default: the name it was imported as, else :func:`default_name`); see the
    module docstring. Idempotent.

    Raises:
        ArgsError: no GGUF file, several, or a name Ollama would not take.
        LicenseError: the licence needs an acceptance not recorded.
        ConflictError: a folder on the way is a symlink or a file.
        VerifyError: stored bytes are damaged (nothing is named after them).
        DiskError: not enough free disk (before anything is written).
    """
    from cas.hub import require_free
    from cas.licenses import require_accepted

    root = (models_dir or default_models_dir()).expanduser()
    version = store.resolve(spec)
    manifest = store.manifest(version)
    require_accepted(store, version, manifest, accept_license)
    plan = _plan(store, manifest)
    recorded_name = manifest.metadata.extra.get(META_NAME)
    if as_name:
        name = OllamaName.parse(as_name)
    elif recorded_name:
        name = OllamaName.parse(recorded_name)
    else:
        name = default_name(version.name)
    blobs = root / "blobs"
    entries = [f for _m, f in plan.layers if not isinstance(f, bytes)]
    missing = sum(f.size for f in entries if not (blobs / f"sha256-{f.sha256}").exists())
    require_free([(root, missing)], f"exporting {version.ref} to {root}")
    sources = share_sources(store, entries) if share else None
    out: list[OllamaLayer] = []
    written = nbytes = 0
    total, done = sum(f.size for f in entries), 0
    try:
        real_dirs(root, blobs)
        real_dirs(root, root / "manifests" / name.rel_path.rsplit("/", 1)[0])
        config = _put_bytes(blobs, plan.config)
        for media, item in plan.layers:
            if isinstance(item, bytes):
                d = _put_bytes(blobs, item)
                out.append(OllamaLayer(media, d[0], len(item), "", d[1]))
                written += d[1]
                continue
            final = blobs / f"sha256-{item.sha256}"
            fresh = not holds(final, item)
            if fresh:
                staged = stage(store, version, item, blobs, prefix="sha256-", sources=sources)
                staged.publish(final, 0o644)
                written += 1
                nbytes += item.size
            else:
                os.utime(final)  # touchLayer: Ollama's own reuse refreshes the times
            out.append(OllamaLayer(media, f"sha256:{item.sha256}", item.size, item.path,
                                   fresh))
            done += item.size
            if progress is not None:
                progress(done, total, item.path)
        fsync_dir(blobs)
        body = plan.manifest or go_json({
            "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config[0],
                       "size": len(plan.config)},
            "layers": [{"mediaType": la.media_type, "digest": la.digest, "size": la.size}
                       for la in out]})
        path = root / "manifests" / name.rel_path
        atomic_write(path, body)
    except OSError as exc:
        raise from_os_error(exc, f"exporting {version.ref} to {root}") from None
    import hashlib

    check = read_model(root, str(name))
    return OllamaExportResult(version.name, version.seq, version.commit, name.short, str(root),
                              str(path), hashlib.sha256(body).hexdigest(), out,
                              written + config[1], len(out) + 1 - written - config[1], nbytes,
                              check.warnings)


def _put_bytes(blobs: Path, data: bytes) -> tuple[str, bool]:
    """A small blob cas makes (config, licence id): ``(digest, True if written)``."""
    import hashlib

    hexd = hashlib.sha256(data).hexdigest()
    final = blobs / f"sha256-{hexd}"
    try:
        if final.is_file() and not final.is_symlink() and final.read_bytes() == data:
            return f"sha256:{hexd}", False
    except OSError:
        pass
    tmp = temp_path(blobs, "sha256-")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f"sha256:{hexd}", True


# -- reading a store ----------------------------------------------------------------------


class OllamaModel(msgspec.Struct):
    name: str
    manifest_path: str
    digest: str
    config: dict[str, Any]
    layers: list[OllamaLayer]
    warnings: list[CasWarning] = []


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{where}: not JSON ({exc})") from None
    ok = isinstance(doc, dict) and isinstance(doc.get("layers"), list) and \
        isinstance(doc.get("config"), dict)
    for layer in ([doc["config"]] + doc["layers"]) if ok else []:
        ok = ok and isinstance(layer, dict) and isinstance(layer.get("mediaType"), str) \
            and isinstance(layer.get("digest"), str) and _DIGEST.match(layer["digest"]) \
            is not None and type(layer.get("size")) is int and layer["size"] >= 0
    if not ok:
        raise SchemaError(f"{where}: not an Ollama manifest (config and layers with "
                          "mediaType, sha256 digest and size)")
    return doc


def blob_path(root: Path, digest: str) -> Path:
    """``BlobsPath``: only ``sha256[:-]<64 hex>`` digests name a blob."""
    m = _DIGEST.match(digest)
    if m is None:
        raise SchemaError(f"{digest!r} is not a sha256 digest")
    return root / "blobs" / f"sha256-{m.group(1)}"


def read_model(root: Path, name: str) -> OllamaModel:
    """Read model ``name`` from the store at ``root`` as Ollama's ``GetModel`` does, and
    check each blob's size (the bytes were hashed when written or found).

    Raises:
        NotFoundError: no manifest for the name.
        SchemaError: a malformed manifest or config, or a blob missing or of another size.
    """
    n = OllamaName.parse(name)
    path = root / "manifests" / n.rel_path
    try:
        data = path.read_bytes()[: MAX_JSON + 1]
    except FileNotFoundError:
        raise NotFoundError(f"no Ollama model {n.short} in {root}") from None
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    import hashlib

    doc = _parse_manifest(data, str(path))
    layers = []
    for layer in [doc["config"], *doc["layers"]]:
        blob = blob_path(root, layer["digest"])
        try:
            size = os.stat(blob).st_size
        except OSError:
            raise SchemaError(f"{n.short}: blob {blob.name} is missing") from None
        if size != layer["size"]:
            raise SchemaError(f"{n.short}: blob {blob.name} holds {size} bytes, the manifest "
                              f"says {layer['size']}")
        layers.append(OllamaLayer(layer["mediaType"], layer["digest"], size))
    try:
        config = json.loads(blob_path(root, doc["config"]["digest"]).read_bytes()[:MAX_JSON])
    except (OSError, ValueError):
        raise SchemaError(f"{n.short}: config blob is not JSON") from None
    return OllamaModel(str(n), str(path), hashlib.sha256(data).hexdigest(),
                       config if isinstance(config, dict) else {}, layers[1:])


def list_models(root: Path) -> list[OllamaName]:
    """Every manifest under ``manifests/`` (``Manifests``: exactly four levels), sorted;
    paths that are not valid names are left out."""
    top = root / "manifests"
    if not top.is_dir():
        raise NotFoundError(f"{root}: no Ollama store there (no manifests/)")
    out = []
    for p in sorted(top.glob("*/*/*/*")):
        if p.is_file() and not p.is_symlink():
            rel = p.relative_to(top).parts
            name = OllamaName(*rel)
            try:
                name.check(str(p))
            except ArgsError:
                continue
            out.append(name)
    return out


# -- import -------------------------------------------------------------------------------


class OllamaImported(msgspec.Struct):
    ollama_name: str
    name: str
    #: "registered", "unchanged" (content equal to the latest version), "present" (this
    #: manifest was registered before) or "skipped" (see warnings).
    status: str
    seq: int = 0
    files: int = 0
    total_size: int = 0
    new_stored_bytes: int = 0


class OllamaImportResult(msgspec.Struct):
    models_dir: str
    models: list[OllamaImported]
    warnings: list[CasWarning] = []


def _wanted(names: list[OllamaName], patterns: Sequence[str]) -> list[OllamaName]:
    """The manifests ``patterns`` name (case-insensitively, as Ollama compares names); a
    pattern without a tag names every tag."""
    if not patterns:
        return names
    out: list[OllamaName] = []
    for text in patterns:
        given = OllamaName.parse(text)
        any_tag = text.rfind(":") <= text.rfind("/")
        key = (given.host.lower(), given.namespace.lower(), given.model.lower())
        hits = [n for n in names if (n.host.lower(), n.namespace.lower(), n.model.lower())
                == key and (any_tag or n.tag.lower() == given.tag.lower())]
        if not hits:
            raise NotFoundError(f"no Ollama model {given.short} in the store")
        out.extend(h for h in hits if h not in out)
    return out


def import_models(store: Store, models_dir: Path | None = None, names: Sequence[str] = (),
                  progress: Progress | None = None) -> OllamaImportResult:
    """Register the models of the Ollama store at ``models_dir`` (those ``names`` give,
    ``MODEL[:TAG]``; without a tag every tag) as versions (see the module docstring).
    Idempotent.

    Raises:
        NotFoundError: no Ollama store there, or a named model it does not hold.
        ArgsError: a name Ollama would not take.
    """
    root = (models_dir or default_models_dir()).expanduser()
    chosen = _wanted(list_models(root), names)
    done: list[OllamaImported] = []
    warnings: list[CasWarning] = []
    for n in chosen:
        cas_name = n.cas_name()

        def skip(why: str, n: OllamaName = n, cas_name: str = cas_name) -> None:
            warnings.append(CasWarning("W_OLLAMA_SKIPPED", f"{n.short}: {why}; skipped"))
            done.append(OllamaImported(n.short, cas_name, "skipped"))

        try:
            validate_model_name(cas_name)
            model = read_model(root, str(n))
            data = Path(model.manifest_path).read_bytes()
            doc = _parse_manifest(data, model.manifest_path)
            config = blob_path(root, doc["config"]["digest"]).read_bytes()[: MAX_JSON + 1]
            data.decode(), config.decode()
        except UnicodeDecodeError:
            skip("its manifest or config is not UTF-8 text")
            continue
        except (CasError, OSError) as exc:
            skip(exc.message if isinstance(exc, CasError) else str(exc))
            continue
        if len(config) > MAX_JSON:
            skip("its config blob is too big for an Ollama config")
            continue
        unknown = sorted({la.media_type for la in model.layers} - set(LAYER_FILES))
        if unknown:
            skip(f"layers of a kind cas does not register ({', '.join(unknown)})")
            continue
        source = f"{SCHEME}{n}@sha256:{model.digest}"
        seen = recorded_sources(store, cas_name).get(source)
        if seen is not None:
            done.append(OllamaImported(n.short, cas_name, "present", seen[0]))
            continue
        try:
            result = _register(store, root, n, model, source, data, config, progress)
        except VerifyError as exc:
            skip(exc.message)
            continue
        warnings.extend(result[1])
        done.append(result[0])
    return OllamaImportResult(str(root), done, warnings)


def _register(store: Store, root: Path, n: OllamaName, model: OllamaModel, source: str,
              manifest_bytes: bytes, config: bytes, progress: Progress | None
              ) -> tuple[OllamaImported, list[CasWarning]]:
    """Check every blob against its digest, then add a folder of symlinks to them."""
    from cas.ingest import AddOptions

    counts: dict[str, int] = {}
    links: list[tuple[str, Path]] = []
    for layer in model.layers:
        blob = blob_path(root, layer.digest)
        sha256, _sha1, size = hash_file(blob)
        if sha256 != layer.digest[7:].lower() or size != layer.size:
            raise VerifyError(f"blob {blob.name} holds bytes with SHA-256 {sha256} "
                              f"({size} bytes)", expected=layer.digest, actual=sha256)
        i = counts[layer.media_type] = counts.get(layer.media_type, 0) + 1
        base = LAYER_FILES[layer.media_type]
        stem, dot, ext = base.partition(".")
        links.append((base if i == 1 else f"{stem}-{i}{dot}{ext}", blob))
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{store.path.name}.ollama-",
                                       dir=store.path.parent))
    except OSError as exc:
        raise from_os_error(exc, f"creating a folder beside {store.path}") from None
    tags: list[str] = []
    try:
        validate_tag(n.tag)
        tags = [n.tag]
    except ArgsError:
        pass
    try:
        for rel, blob in links:
            os.symlink(blob.resolve(), folder / rel)
        options = AddOptions(
            message=f"import {n.short} from the Ollama store", tags=tags, force_tag=True,
            source=source,
            extra={META_NAME: str(n), META_MANIFEST: manifest_bytes.decode(),
                   META_CONFIG: config.decode()})
        added = store.add(n.cas_name(), folder, options, progress)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return (OllamaImported(n.short, added.name, "registered" if added.created else "unchanged",
                           added.seq, added.files, added.total_size, added.new_stored_bytes),
            list(added.warnings))
