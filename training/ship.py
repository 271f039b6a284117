"""Install an exported student as one of the package's shipped models, with its model card.

    python -m reranker.training.ship MODEL_DIR --card MODEL_CARD.md [--profile late|cross]

Copies the int8 ONNX file(s) (a late student: the joint graph with the query encoder, the same
graph with the query's encoder in float32 arithmetic, ``joint.int8-float-query.onnx``, the
profile's default, and the product encoder), the tokenizer and the config (reduced to the int8
variants) into the package (``reranker/models/late`` unless told otherwise: the late student,
the first stage of the ``default`` and ``accurate`` cascades; ``cross`` is their second stage
and a profile of its own), refuses model files over 75 MB in all (the wheel, every profile and
the retriever's embedder in it, must stay within 100 MB: 92.0 MB with the late student's three
graphs, twentieth session), checks that the installed copy loads, and puts the model card
beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from reranker.crossencoder import CONFIG_FILE
from reranker.errors import ModelError
from reranker.late import FLOAT_QUERY
from reranker.models import PACKAGED_MODELS, open_model

MAX_MB = 75.0


def ship(
    model_dir: Path, output: Path, card: str, variant: str = "int8", name: str | None = None
) -> Path:
    model = open_model(model_dir, variant=variant)  # validates the directory
    onnx = model_dir / model.config.files[variant]
    graphs = [onnx]
    cfg = json.loads((model_dir / CONFIG_FILE).read_text())
    default = variant
    if model.config.architecture == "late":
        graphs.append(model_dir / model.config.encoder_files[variant])
        cfg["encoder_files"] = {variant: graphs[1].name}
        cfg["files"] = {variant: onnx.name}
        if variant == "int8" and FLOAT_QUERY in model.config.files:
            # the query's encoder in float32 arithmetic: the profile's default (the query
            # computed as its products are); cascades over it choose the int8 graph
            graphs.append(model_dir / model.config.files[FLOAT_QUERY])
            cfg["files"][FLOAT_QUERY] = graphs[2].name
            cfg["encoder_files"][FLOAT_QUERY] = graphs[1].name
            default = FLOAT_QUERY
    else:
        cfg["files"] = {variant: "model.int8.onnx" if variant == "int8" else onnx.name}
    size = sum(g.stat().st_size for g in graphs) / 1e6
    if size > MAX_MB:
        raise ModelError(
            f"{', '.join(map(str, graphs))}: {size:.1f} MB; the shipped model must be at most "
            f"{MAX_MB} MB"
        )
    cfg["default_variant"] = default
    if "calibrations" in cfg:
        cfg["calibrations"] = {v: c for v, c in cfg["calibrations"].items() if v in cfg["files"]}
    if name:
        cfg.setdefault("metadata", {})["name"] = name
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    shutil.copyfile(onnx, output / cfg["files"][variant])
    for graph in graphs[1:]:
        shutil.copyfile(graph, output / graph.name)
    shutil.copyfile(model_dir / "tokenizer.json", output / "tokenizer.json")
    (output / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (output / "MODEL_CARD.md").write_text(card)
    open_model(output)  # the installed copy loads
    return output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--card", type=Path, required=True, help="the model card (Markdown)")
    ap.add_argument(
        "--profile",
        choices=("late", "cross"),
        default="late",
        help="the shipped folder to replace (the default profile is a cascade of the two)",
    )
    ap.add_argument("--output", type=Path, help="any other folder instead of a profile's")
    ap.add_argument("--name", help="the model's name in answers (default: its directory's)")
    args = ap.parse_args()
    output = args.output or PACKAGED_MODELS / args.profile
    out = ship(args.model_dir, output, args.card.read_text(), name=args.name)
    print(f"installed {args.model_dir} as {out}")


if __name__ == "__main__":
    main()
