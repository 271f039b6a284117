"""Model loading: the one place that picks the runtime class of a model directory, above the
runtimes it chooses between (:mod:`reranker.crossencoder`, :mod:`reranker.late`), neither of
which imports the other's loader.

The package ships students as *profiles*, selectable by name wherever a model directory is
accepted (``--model accurate``, ``open_model("accurate")``, ``RERANKER_MODEL=accurate``):

- ``default`` (also ``fast``): a cascade (:mod:`reranker.cascade`) of the two students below:
  the late student on every candidate, the cross-encoder on its best 12, ordered by their blend;
  what every command uses without ``--model``.
- ``accurate``: the same two students blended over every candidate (the cross-encoder on all of
  them), slower per query.
- ``late``: the late-interaction student alone, 100 candidates in a few milliseconds (product
  states stored with the index).
- ``cross``: the full cross-encoder student alone, on every candidate.

``retriever`` is not a reranker but the sentence embedder (all-MiniLM-L6-v2, int8) of the dense
half of the embedded first stage (:mod:`reranker.index.dense`).

Each folder has its ``MODEL_CARD.md``.
"""

from __future__ import annotations

from pathlib import Path

from reranker.crossencoder import CONFIG_FILE, CrossEncoder, ModelConfig
from reranker.errors import ModelError, ModelNotInstalledError

PACKAGED_MODELS = Path(__file__).resolve().parent
#: Profile name → folder under :data:`PACKAGED_MODELS`.
PROFILES = {
    "default": "default",
    "fast": "default",
    "accurate": "accurate",
    "late": "late",
    "cross": "cross",
}


def packaged_embedder_dir() -> Path | None:
    """The shipped sentence embedder of hybrid retrieval, or ``None`` when it is not installed."""
    path = PACKAGED_MODELS / "retriever"
    return path if (path / "embedder.json").is_file() else None


def packaged_model_dir(name: str) -> Path:
    """The folder of a shipped profile (one of :data:`PROFILES`)."""
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


def open_model(model: str | Path, *, second_k: int | None = None, **kwargs) -> CrossEncoder:
    """The runtime model of a model directory or a shipped profile's name: a
    :class:`CrossEncoder`, a :class:`reranker.late.LateCrossEncoder` for a late-interaction
    student, or a :class:`reranker.cascade.CascadeReranker` for a two-stage directory.
    ``second_k``: how many of its first stage's best a cascade's second stage rescores instead
    of its config's (e.g. fewer on a CPU without VNNI, ``BENCHMARKS.md``); only for a cascade."""
    model_dir = resolve_model_dir(model)
    if model_dir.is_dir() and _is_cascade_dir(model_dir):
        from reranker.cascade import CascadeReranker

        return CascadeReranker(model_dir, second_k=second_k, **kwargs)  # type: ignore[return-value]
    if second_k is not None:
        raise ModelError(
            f"{model} is not a cascade: a second-stage count applies to a two-stage model "
            "(the default or accurate profile, or one written by `reranker cascade`)"
        )
    if model_dir.is_dir() and ModelConfig.read(model_dir).architecture == "late":
        from reranker.late import LateCrossEncoder

        return LateCrossEncoder(model_dir, **kwargs)
    return CrossEncoder(model_dir, **kwargs)


def _is_cascade_dir(model_dir: Path) -> bool:
    import json

    from reranker.cascade import is_cascade

    try:
        return is_cascade(json.loads((model_dir / CONFIG_FILE).read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # ModelConfig.read says what is wrong


def model_fields(model: str | Path) -> tuple[str, ...]:
    """The product attributes a model reads after the title (a cascade: its stages' common
    ones), from its config alone: nothing is loaded."""
    model_dir = resolve_model_dir(model)
    if _is_cascade_dir(model_dir):
        from reranker.cascade import CascadeConfig

        return model_fields(model_dir / CascadeConfig.read(model_dir).first)
    return ModelConfig.read(model_dir).fields
