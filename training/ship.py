"""Install an exported student as one of the package's shipped models, with its model card.

    python -m reranker.training.ship MODEL_DIR --card MODEL_CARD.md [--profile late|cross]

Copies the int8 ONNX file(s) (a late student: the joint graph with the query encoder, and the
product encoder), the tokenizer and the config (reduced to the int8 variant) into the package
(``reranker/models/late`` unless told otherwise: the late student, the first stage of the
``default`` and ``accurate`` cascades; ``cross`` is their second stage and a profile of its own),
refuses model files over 50 MB in all, checks that the installed copy loads, and puts the model
card beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from reranker.crossencoder import CONFIG_FILE
from reranker.errors import ModelError
from reranker.models import PACKAGED_MODELS, open_model

MAX_MB = 50.0


def ship(
    model_dir: Path, output: Path, card: str, variant: str = "int8", name: str | None = None
) -> Path:
    model = open_model(model_dir, variant=variant)  # validates the directory
    onnx = model_dir / model.config.files[variant]
    graphs = [onnx]
    cfg = json.loads((model_dir / CONFIG_FILE).read_text())
    if model.config.architecture == "late":
        graphs.append(model_dir / model.config.encoder_files[variant])
        cfg["encoder_files"] = {variant: graphs[1].name}
        cfg["files"] = {variant: onnx.name}
    else:
        cfg["files"] = {variant: "model.int8.onnx" if variant == "int8" else onnx.name}
    size = sum(g.stat().st_size for g in graphs) / 1e6
    if size > MAX_MB:
        raise ModelError(
            f"{', '.join(map(str, graphs))}: {size:.1f} MB; the shipped model must be at most "
            f"{MAX_MB} MB"
        )
    cfg["default_variant"] = variant
    if name:
        cfg.setdefault("metadata", {})["name"] = name
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    shutil.copyfile(onnx, output / cfg["files"][variant])
    if len(graphs) > 1:
        shutil.copyfile(graphs[1], output / graphs[1].name)
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
