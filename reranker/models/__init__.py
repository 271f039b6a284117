"""Model loading: the one place that picks the runtime class of a model directory, above the
runtimes it chooses between (:mod:`reranker.crossencoder`, :mod:`reranker.late`), neither of
which imports the other's loader.

The package ships students as *profiles*, selectable by name wherever a model directory is
accepted (``--model accurate``, ``open_model("accurate")``, ``RERANKER_MODEL=accurate``):

- ``default`` (also ``fast``): the late-interaction student that reranks 100 candidates in a
  few milliseconds; what every command uses without ``--model``.
- ``accurate``: a full cross-encoder, slower per query, better ranked (``MODEL_CARD.md`` in its
  folder).
"""

from __future__ import annotations

from pathlib import Path

from reranker.crossencoder import CrossEncoder, ModelConfig
from reranker.errors import ModelError, ModelNotInstalledError

PACKAGED_MODELS = Path(__file__).resolve().parent
#: Profile name → folder under :data:`PACKAGED_MODELS`.
PROFILES = {"default": "default", "fast": "default", "accurate": "accurate"}


def packaged_model_dir(name: str) -> Path:
    """The folder of a shipped profile (``default``, ``fast``, ``accurate``)."""
    if name not in PROFILES:
        raise ModelError(
            f"no packaged model named {name!r}; the profiles are {', '.join(PROFILES)}"
        )
    path = PACKAGED_MODELS / PROFILES[name]
    if not (path / "reranker.json").is_file():
        raise ModelNotInstalledError(
            f"the {name!r} model is not installed in this package ({path}): pass --model DIR, "
            "a directory written by `reranker export`"
        )
    return path


def resolve_model_dir(model: str | Path) -> Path:
    """A model directory, or the folder of a shipped profile when ``model`` names one and no
    directory of that name exists."""
    path = Path(model)
    if path.is_dir() or str(model) not in PROFILES:
        return path
    return packaged_model_dir(str(model))


def open_model(model: str | Path, **kwargs) -> CrossEncoder:
    """The runtime model of a model directory or a shipped profile's name: a
    :class:`CrossEncoder`, or a :class:`reranker.late.LateCrossEncoder` for a late-interaction
    student."""
    model_dir = resolve_model_dir(model)
    if model_dir.is_dir() and ModelConfig.read(model_dir).architecture == "late":
        from reranker.late import LateCrossEncoder

        return LateCrossEncoder(model_dir, **kwargs)
    return CrossEncoder(model_dir, **kwargs)
