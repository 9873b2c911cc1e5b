"""Compiled bundles: one file holding what a compiled model needs to run again without
compiling (`CompiledModel.save`, `ember.load`).

A bundle is a zip archive (nothing pickled):

    manifest.json        format, ember version, the device and driver it was built for,
                         the input signature and output names, the opt level, the tuned
                         parameters used, one entry per specialization, and the sha256 of
                         every other member
    manifest.sha256      the sha256 of manifest.json
    plans/<i>.json       specialization i's ExecutionPlan (runtime/plan_codec.py)
    arrays/<i>/<k>.npy   its constants and array attributes (np.save, allow_pickle=False)
    binaries/<sha>.bin   OpenCL program binaries, as the driver handed them out: one per
                         program of a plan (`ExecutionPlan.programs()`: the generic kernels
                         shared by all shapes, then the shape's own), each stored once
    model.onnx           the ONNX model it was compiled from (absent for a built Graph)

Reading checks the chain of checksums before using a byte: the manifest against
manifest.sha256, every member against the manifest. A file that is not a bundle, is
truncated, or fails a check is a ModelLoadError naming the file and what failed. Deciding
whether the stored plans fit the device at hand (and rebuilding when they do not) is the
loader's job (ember/loaded.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ember.errors import ModelLoadError
from ember.ir import DType
from ember.paths import VERSION
from ember.runtime.device import OpenCLDevice
from ember.runtime.plan_codec import PlanFormatError, decode_plan, encode_plan
from ember.runtime.types import ExecutionPlan

__all__ = ["FORMAT", "SUFFIX", "DeviceRecord", "StoredSpecialization", "Bundle",
           "write_bundle", "read_bundle", "read_model", "save_compiled", "program_binary",
           "PlanFormatError"]

log = logging.getLogger(__name__)

FORMAT = 1  # the layout above; another layout is refused, never guessed at
SUFFIX = ".ember"
MAGIC = "ember-bundle"
MANIFEST, MANIFEST_SUM, MODEL = "manifest.json", "manifest.sha256", "model.onnx"
_MAX_MANIFEST_BYTES = 64 << 20

Dims = tuple[int | str | None, ...]


@dataclass(frozen=True)
class DeviceRecord:
    """The device and driver a bundle's plans and binaries were made for."""

    target: str  # "opencl:P:D" on the machine that saved it
    name: str
    vendor: str
    platform: str
    version: str
    driver_version: str
    family: str
    fingerprint: str  # DeviceTraits.fingerprint

    @staticmethod
    def of(device: OpenCLDevice) -> DeviceRecord:
        t = device.info.traits
        return DeviceRecord(device.info.target, t.name, t.vendor, t.platform, t.version,
                            t.driver_version, device.info.family.name, t.fingerprint)

    def differences(self, device: OpenCLDevice) -> list[str]:
        """What differs between this record and `device`, in words (empty: the same)."""
        here = DeviceRecord.of(device)
        labels = (("name", "device"), ("vendor", "vendor"), ("platform", "platform"),
                  ("version", "device version"), ("driver_version", "driver version"),
                  ("family", "family"))
        found = [f"{label} {getattr(self, key)!r} in the bundle, {getattr(here, key)!r} here"
                 for key, label in labels if getattr(self, key) != getattr(here, key)]
        if not found and self.fingerprint != here.fingerprint:
            found.append(f"fingerprint {self.fingerprint!r} in the bundle, "
                         f"{here.fingerprint!r} here")
        return found

    def __str__(self) -> str:
        return f"{self.name} ({self.platform}, driver {self.driver_version}, " \
               f"family {self.family})"


@dataclass(frozen=True)
class StoredSpecialization:
    shapes: tuple[tuple[int, ...], ...]  # the input shapes, in input order
    plan: ExecutionPlan
    # the binary of each of plan.programs(), in order (None: the driver handed none out)
    binaries: tuple[bytes | None, ...] = ()


@dataclass
class Bundle:
    name: str  # the model's (graph's) name
    device: DeviceRecord | None  # None: the numpy target
    opt_level: int
    inputs: dict[str, tuple[Dims, DType]]  # input name -> (dims, dtype), as the model says
    output_names: list[str]
    specializations: list[StoredSpecialization]
    has_model: bool  # the ONNX model is inside (read it with read_model)
    tuning: list[dict[str, Any]] = field(default_factory=list)  # the parameters used
    ember_version: str = VERSION
    # the shapes the manifest lists (read_bundle(plans=False) leaves `specializations` empty)
    stored_shapes: list[tuple[tuple[int, ...], ...]] = field(default_factory=list)

    @property
    def shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        """The input shapes of the stored specializations, in order."""
        return self.stored_shapes or [spec.shapes for spec in self.specializations]


# -- writing ---------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def _plain(value: Any) -> Any:
    """A tunable params value as JSON (for people reading the manifest)."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def _tuning_used(specializations: Sequence[StoredSpecialization]) -> list[dict[str, Any]]:
    found = []
    for index, spec in enumerate(specializations):
        for step in spec.plan.steps:
            lookup = step.lowered.tuning if step.lowered is not None else None
            if lookup is not None:
                found.append({"specialization": index, "step": step.name, "op": step.op,
                              "kind": lookup.kind, "key": lookup.key,
                              "params": _plain(lookup.params), "level": lookup.level,
                              "source": lookup.source})
    return found


def write_bundle(path: str | os.PathLike[str], bundle: Bundle, model: bytes | None) -> Path:
    """Write `bundle` (and the ONNX `model` bytes, if any) to `path`, whole or not at all:
    a temporary file beside it is renamed into place."""
    path = Path(path)
    members: dict[str, bytes] = {}
    specs = []
    for index, spec in enumerate(bundle.specializations):
        data, arrays = encode_plan(spec.plan, f"arrays/{index}/")
        plan_name = f"plans/{index}.json"
        members[plan_name] = json.dumps(data, separators=(",", ":")).encode()
        for name, array in arrays.items():
            members[name] = _npy_bytes(array)
        binary_names = []
        for binary in spec.binaries:
            name = f"binaries/{_sha256(binary)[:32]}.bin" if binary else None
            if name is not None:
                members[name] = binary
            binary_names.append(name)
        specs.append({"shapes": [list(s) for s in spec.shapes], "plan": plan_name,
                      "binaries": binary_names, "kernels": len(spec.plan.kernels()),
                      "steps": len(spec.plan.steps)})
    if model is not None:
        members[MODEL] = model
    manifest = {
        "format": MAGIC, "format_version": FORMAT, "ember_version": bundle.ember_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "name": bundle.name,
        "device": asdict(bundle.device) if bundle.device is not None else None,
        "opt_level": bundle.opt_level,
        "inputs": [{"name": name, "dims": list(dims), "dtype": dtype.name}
                   for name, (dims, dtype) in bundle.inputs.items()],
        "outputs": list(bundle.output_names),
        "specializations": specs,
        "model": MODEL if model is not None else None,
        "tuning": bundle.tuning,
        "members": {name: _sha256(data) for name, data in members.items()},
    }
    manifest_bytes = json.dumps(manifest, indent=1).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
            archive.writestr(MANIFEST, manifest_bytes, zipfile.ZIP_DEFLATED)
            archive.writestr(MANIFEST_SUM, _sha256(manifest_bytes), zipfile.ZIP_STORED)
            for name, data in members.items():
                # arrays and binaries stored as they are: loading reads them at disk speed
                method = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
                archive.writestr(name, data, method)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def program_binary(program: Any) -> bytes | None:
    """The driver's binary of a built pyopencl program (None where it hands none out)."""
    import pyopencl as cl

    try:
        binaries = program.get_info(cl.program_info.BINARIES)
    except cl.Error as exc:
        log.info("the driver hands out no program binary (%s): the bundle holds sources "
                 "only", exc)
        return None
    return bytes(binaries[0]) if binaries and binaries[0] else None


def save_compiled(path: str | os.PathLike[str],
                  specializations: Iterable[tuple[tuple[tuple[int, ...], ...],
                                                  ExecutionPlan, Sequence[Any]]],
                  *, name: str, inputs: Mapping[str, tuple[Dims, DType]],
                  output_names: Sequence[str], device: OpenCLDevice | None, opt_level: int,
                  model: bytes | None) -> Path:
    """Write a compiled model's bundle: `specializations` are (input shapes, plan, the
    built pyopencl programs of plan.programs()) for each specialization compiled so far.
    Binaries are fetched once per program (PoCL finishes compiling when asked for one)."""
    fetched: dict[int, bytes | None] = {}

    def binary(program: Any) -> bytes | None:
        if id(program) not in fetched:
            fetched[id(program)] = program_binary(program)
        return fetched[id(program)]

    stored = [StoredSpecialization(tuple(tuple(s) for s in shapes), plan,
                                   tuple(binary(p) for p in programs))
              for shapes, plan, programs in specializations]
    bundle = Bundle(name, DeviceRecord.of(device) if device is not None else None, opt_level,
                    dict(inputs), list(output_names), stored, model is not None,
                    _tuning_used(stored))
    return write_bundle(path, bundle, model)


# -- reading ---------------------------------------------------------------------------------
class _Reader:
    """Members of an open bundle, each checked against the manifest's sha256."""

    def __init__(self, path: Path, archive: zipfile.ZipFile, sums: Mapping[str, str]) -> None:
        self.path = path
        self.archive = archive
        self.sums = sums

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: {what}; the bundle is damaged or was changed "
                              f"after it was written (save the model again)")

    def read(self, name: str) -> bytes:
        expected = self.sums.get(name)
        if expected is None:
            raise self.fail(f"member {name!r} is not listed in its manifest")
        try:
            data = self.archive.read(name)
        except KeyError:
            raise self.fail(f"member {name!r} is missing") from None
        except Exception as exc:  # noqa: BLE001 - zipfile and zlib raise many kinds
            raise self.fail(f"member {name!r} cannot be read ({exc})") from None
        if _sha256(data) != expected:
            raise self.fail(f"member {name!r} fails its sha256 check")
        return data

    def verify(self, name: str) -> None:
        """Check a member against the manifest without keeping it (read in pieces)."""
        expected = self.sums.get(name)
        if expected is None:
            raise self.fail(f"member {name!r} is not listed in its manifest")
        digest = hashlib.sha256()
        try:
            with self.archive.open(name) as member:
                for piece in iter(lambda: member.read(1 << 22), b""):
                    digest.update(piece)
        except KeyError:
            raise self.fail(f"member {name!r} is missing") from None
        except Exception as exc:  # noqa: BLE001 - zipfile and zlib raise many kinds
            raise self.fail(f"member {name!r} cannot be read ({exc})") from None
        if digest.hexdigest() != expected:
            raise self.fail(f"member {name!r} fails its sha256 check")

    def array(self, name: str) -> np.ndarray:
        data = self.read(name)
        try:
            return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise self.fail(f"array {name!r} cannot be read ({exc})") from None


def _open(path: Path) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    """The open archive and its checked manifest."""
    def fail(what: str) -> ModelLoadError:
        return ModelLoadError(f"{path}: {what}; the bundle is damaged or was changed after "
                              f"it was written (save the model again)")

    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path}: is a directory, not an ember bundle") from None
    except Exception as exc:  # noqa: BLE001 - zipfile raises many kinds on a damaged file
        raise ModelLoadError(f"{path}: not an ember bundle (not a whole zip archive: {exc}); "
                             f"a truncated or damaged file, or another kind of file") from None
    try:
        info = archive.getinfo(MANIFEST)
        if info.file_size > _MAX_MANIFEST_BYTES:
            raise fail(f"its manifest claims {info.file_size} bytes")
        manifest_bytes = archive.read(MANIFEST)
        expected = archive.read(MANIFEST_SUM).decode("ascii", "replace").strip()
    except KeyError:
        archive.close()
        raise ModelLoadError(f"{path}: not an ember bundle (no {MANIFEST} / "
                             f"{MANIFEST_SUM})") from None
    except Exception as exc:  # noqa: BLE001 - zipfile and zlib raise many kinds
        archive.close()
        raise fail(f"its manifest cannot be read ({exc})") from None
    if _sha256(manifest_bytes) != expected:
        archive.close()
        raise fail("its manifest fails its sha256 check")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        archive.close()
        raise fail(f"its manifest is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MAGIC:
        archive.close()
        raise ModelLoadError(f"{path}: not an ember bundle (its manifest says format "
                             f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT:
        archive.close()
        raise ModelLoadError(f"{path}: bundle format {manifest.get('format_version')!r}; this "
                             f"ember {VERSION} reads format {FORMAT} (save the model again)")
    return archive, manifest


def _dtype(name: str) -> DType:
    try:
        return DType[name]
    except KeyError:
        raise PlanFormatError(f"unknown input dtype {name!r}") from None


def read_bundle(path: str | os.PathLike[str], *, plans: bool = True) -> Bundle:
    """Read and check a bundle (not its ONNX model: `read_model`). With `plans=False` the
    specializations' plans are not decoded (their list is empty): for tools that only
    read the manifest. Raises ModelLoadError (PlanFormatError where the plans were written
    by an ember this one cannot read)."""
    path = Path(path)
    archive, manifest = _open(path)
    with archive:
        reader = _Reader(path, archive, manifest.get("members", {}))
        try:
            device = manifest["device"]
            record = DeviceRecord(**device) if device is not None else None
            inputs = {item["name"]: (tuple(item["dims"]), _dtype(item["dtype"]))
                      for item in manifest["inputs"]}
            specs = []
            shapes = [tuple(tuple(int(d) for d in s) for s in entry["shapes"])
                      for entry in manifest["specializations"]]
            for entry, entry_shapes in zip(manifest["specializations"] if plans else (),
                                           shapes):
                plan = decode_plan(json.loads(reader.read(entry["plan"])), reader.array)
                binaries = tuple(reader.read(name) if name else None
                                 for name in entry["binaries"])
                specs.append(StoredSpecialization(entry_shapes, plan, binaries))
            if plans and manifest.get("model") is not None:
                reader.verify(manifest["model"])  # damage is found now, not at a rebuild
            return Bundle(str(manifest["name"]), record, int(manifest["opt_level"]), inputs,
                          list(manifest["outputs"]), specs, manifest.get("model") is not None,
                          list(manifest.get("tuning", [])), str(manifest["ember_version"]),
                          shapes)
        except (KeyError, TypeError, ValueError) as exc:
            raise reader.fail(f"its contents are malformed ({type(exc).__name__}: "
                              f"{exc})") from None


def read_model(path: str | os.PathLike[str]) -> bytes:
    """The ONNX model inside a bundle, checked against the manifest."""
    path = Path(path)
    archive, manifest = _open(path)
    with archive:
        if manifest.get("model") is None:
            raise ModelLoadError(f"{path}: the bundle holds no ONNX model (it was saved from "
                                 f"a graph built in Python)")
        return _Reader(path, archive, manifest.get("members", {})).read(manifest["model"])
