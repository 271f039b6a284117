"""A uniform "model soup": the element-wise mean of the weights of students trained with the same
recipe from the same pretrained model (different seeds), saved as one student.

    python -m reranker.training.soup STUDENT_A STUDENT_B [...] --output SOUP

Fine-tuned copies of one pretrained model tend to stay in one basin of the loss, so the mean of
their weights often ranks like their ensemble at the cost of one model (Wortsman et al., 2022,
"Model soups"). Whether it does here is measured, not assumed (``training/REPORT.md``). The
students must have the same architecture, fields and lengths; the soup's ``distill_args.json``
is the first one's, with ``soup_of`` listing every ingredient, so that ``reranker export`` reads
it as it reads a student.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

#: Training settings that must agree for a soup to make sense (the rest: seed, timings, ...).
SAME = ("student", "layers", "fields", "max_length", "arch", "query_max_length")
WEIGHTS = "model.safetensors"


def make_soup(students: list[Path], output: Path) -> Path:
    """Average ``students``' weights into ``output`` (a student directory like theirs)."""
    import torch
    from safetensors.torch import load_file, save_file

    if len(students) < 2:
        raise SystemExit("a soup needs at least two students")
    for s in students:
        missing = [f for f in (WEIGHTS, "distill_args.json") if not (s / f).is_file()]
        if missing:
            raise SystemExit(f"{s} is not a trained student: {', '.join(missing)} missing")
    if (output / WEIGHTS).exists():
        raise SystemExit(f"{output} already holds a model; choose another --output")
    args = [json.loads((s / "distill_args.json").read_text()) for s in students]
    for key in SAME:
        values = {json.dumps(a.get(key)) for a in args}
        if len(values) > 1:
            raise SystemExit(f"the students differ in {key}: {', '.join(sorted(values))}")
    states = [load_file(str(s / WEIGHTS)) for s in students]
    if any(set(s) != set(states[0]) for s in states[1:]):
        raise SystemExit("the students' weights have different names: not the same architecture")
    soup = {}
    for name, first in states[0].items():
        if any(s[name].shape != first.shape for s in states[1:]):
            raise SystemExit(f"weight {name} has different shapes")
        if first.is_floating_point():
            mean = torch.stack([s[name].to(torch.float64) for s in states]).mean(0)
            soup[name] = mean.to(first.dtype).contiguous()
        else:  # integer buffers (position ids): must agree
            if any(not torch.equal(s[name], first) for s in states[1:]):
                raise SystemExit(f"integer buffer {name} differs between the students")
            soup[name] = first
    output.mkdir(parents=True, exist_ok=True)
    for f in students[0].iterdir():
        if f.is_file() and f.name not in (WEIGHTS, "distill_args.json"):
            shutil.copy2(f, output / f.name)
    save_file(soup, str(output / WEIGHTS), metadata={"format": "pt"})
    meta = {
        **args[0],
        "output": str(output),
        "soup_of": [
            {"path": str(s), "seed": a.get("seed")} for s, a in zip(students, args, strict=True)
        ],
    }
    (output / "distill_args.json").write_text(json.dumps(meta, indent=2))
    return output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("students", nargs="+", type=Path)
    ap.add_argument("--output", required=True, type=Path)
    args = ap.parse_args()
    out = make_soup(args.students, args.output)
    print(f"soup of {len(args.students)} students written to {out}")


if __name__ == "__main__":
    main()
