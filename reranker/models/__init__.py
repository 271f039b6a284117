"""Model loading: the one place that picks the runtime class of a model directory, above the
runtimes it chooses between (:mod:`reranker.crossencoder`, :mod:`reranker.late`), neither of
which imports the other's loader. ``default/`` holds the student shipped with the package."""

from __future__ import annotations

from pathlib import Path

from reranker.crossencoder import CrossEncoder, ModelConfig

PACKAGED_MODELS = Path(__file__).resolve().parent


def open_model(model_dir: str | Path, **kwargs) -> CrossEncoder:
    """The runtime model of a model directory: a :class:`CrossEncoder`, or a
    :class:`reranker.late.LateCrossEncoder` for a late-interaction student."""
    if Path(model_dir).is_dir() and ModelConfig.read(Path(model_dir)).architecture == "late":
        from reranker.late import LateCrossEncoder

        return LateCrossEncoder(model_dir, **kwargs)
    return CrossEncoder(model_dir, **kwargs)
