"""A second stage that reads the index's stored states (issue 15, twenty-fourth session): measured,
not shipped.

The default's second stage (the 6-layer cross-encoder on the late student's best 12) costs
~40-60 ms on a CPU without VNNI. This tries the issue's "full-token interaction in the last
layers" without touching the index: a small head over the *stored* states of the shipped late
student (its product encoder's 5 layers, frozen) and the same encoder's states of the query:

    [query states ; product states + a learned product vector]
      -> LAYERS full-token transformer layer(s) (every token attends to both texts)
      -> a [CLS]-only layer at the query's [CLS], pooler, classifier

trained by all-pairs margin-MSE on the teacher's scores (the shipped students' data: the judged
train pairs minus the held-out slice, and the augmented pairs). Two inits:

- ``--init minilm``: the full and [CLS] layers, pooler from all-MiniLM-L6-v2's last layer, a new
  classifier.
- ``--init late``: every layer from the shipped late student's own [CLS] layer (read from its
  ``joint.int8.onnx``, the 7-bit weights dequantised), pooler and classifier too, and each full
  layer's output gated ``x + g * (layer(x) - x)`` with ``g = 0``: it starts as the late student
  (score correlation 0.99 with its int8 graph) and learns how much token interaction to add.

    python scripts/frozen_head.py prep  --index-dir demo/index --out WORK
    python scripts/frozen_head.py train --work WORK --out RUN [--init late --lr 5e-5] [--layers 1]
    python scripts/frozen_head.py eval  --work WORK --run RUN --shipped DIR --json OUT
    python scripts/frozen_head.py time  --work WORK --run RUN --json OUT

``eval`` orders dev and the held-out slice as ``reranker/cascade.py`` would with the head as the
second stage (the late student's int8 scores first, the head's on its best K, blended
``head + w * late``) and compares each form query by query with the shipped default's per-query
files (``reranker eval --per-query``: ``pq_default-dev.parquet``, ``pq_default-holdout.parquet``
in ``--shipped``). ``time`` exports the head to ONNX (dynamic int8, per channel) and times it on
K pairs of a dev query against the shipped cross-encoder on 12, 2 threads. Training resumes from
``RUN/ckpt.pt`` after a kill.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "homedepot"
ART = Path(os.environ.get("ART", "/work/kd-artifacts"))
LATE = ROOT / "reranker" / "models" / "late"
CROSS = ROOT / "reranker" / "models" / "cross"
SETS = {"dev": DATA / "dev.parquet", "holdout": ART / "st" / "train_holdout.parquet"}
MEMBERS = ART / "st" / "scores_members.parquet"
AUGMENTED = str(ROOT / "training" / "results" / "teacher" / "augmented-*.parquet")


# ------------------------------------------------------------------ inputs
def need(*paths) -> None:
    """Stop with one line naming the first input that is not there."""
    for p in paths:
        if not Path(p).exists():
            raise SystemExit(f"frozen_head: {p} not found")


def prep(args) -> None:
    """The late student's stored states of every catalog product (from the index, checked against
    the runtime's own encoding) and its encoder's states of every query of the data."""
    from reranker.late import LateCrossEncoder, dequantize_states

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = Path(args.index_dir)
    need(index / "CURRENT", MEMBERS, *SETS.values())
    gen = index / (index / "CURRENT").read_text().strip()
    late = LateCrossEncoder(LATE, variant="int8")
    products = pq.read_table(gen / "products.parquet", columns=["id", "title"]).to_pydict()
    states = np.load(gen / "product_states.npy", mmap_mode="r")
    offsets = np.load(gen / "product_state_offsets.npy")
    for r in (0, len(offsets) // 2, len(offsets) - 2):
        mine = dequantize_states(late.encode_texts([products["title"][r]])[0])
        stored = dequantize_states(np.asarray(states[offsets[r] : offsets[r + 1]]))
        if mine.shape != stored.shape or np.abs(mine - stored).max() > 1e-6:
            raise SystemExit(f"the index's states of row {r} are not the shipped late student's")
    np.save(out / "pstates.npy", np.asarray(states))
    np.save(out / "poffsets.npy", offsets)
    (out / "pids.json").write_text(json.dumps([str(p) for p in products["id"]]))
    queries: set[str] = set()
    for f in [MEMBERS, *SETS.values(), *sorted(glob.glob(AUGMENTED))]:
        queries.update(pq.read_table(f, columns=["query"]).column("query").to_pylist())
    ordered = sorted(queries)
    q_states = late.encode_ids([late.query_ids(q) for q in ordered], batch_size=256)
    with open(out / "qstates.pkl", "wb") as fh:
        pickle.dump({q: s.astype(np.float32) for q, s in zip(ordered, q_states, strict=True)}, fh)
    print(f"{len(products['id'])} products, {len(ordered)} queries -> {out}")


class Feats:
    def __init__(self, work) -> None:
        w = Path(work)
        need(*(w / f for f in ("pstates.npy", "poffsets.npy", "pids.json", "qstates.pkl")))
        self.ps = np.load(w / "pstates.npy", mmap_mode="r")
        self.po = np.load(w / "poffsets.npy")
        self.row = {p: i for i, p in enumerate(json.loads((w / "pids.json").read_text()))}
        with open(w / "qstates.pkl", "rb") as fh:
            self.qs = pickle.load(fh)

    def batch_np(self, queries, pids):
        """``[query ; product]`` states per pair, padded: (x, mask, is_product)."""
        from reranker.late import dequantize_states

        qs = [self.qs[q] for q in queries]
        ps = []
        for p in pids:
            r = self.row[p]
            ps.append(dequantize_states(np.asarray(self.ps[self.po[r] : self.po[r + 1]])))
        width = max(len(a) + len(b) for a, b in zip(qs, ps, strict=True))
        x = np.zeros((len(qs), width, qs[0].shape[1]), np.float32)
        mask = np.zeros((len(qs), width), np.int64)
        is_product = np.zeros((len(qs), width), np.int64)
        for i, (a, b) in enumerate(zip(qs, ps, strict=True)):
            x[i, : len(a)] = a
            x[i, len(a) : len(a) + len(b)] = b
            mask[i, : len(a) + len(b)] = 1
            is_product[i, len(a) : len(a) + len(b)] = 1
        return x, mask, is_product

    def batch(self, queries, pids):
        import torch

        return tuple(torch.from_numpy(a) for a in self.batch_np(queries, pids))


# ------------------------------------------------------------------ the head
def late_weights(path=LATE / "joint.int8.onnx") -> dict:
    """The late student's [CLS] layer, pooler and classifier from its joint graph, dequantised."""
    import onnx
    import torch
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    def deq(n):
        q = w[n + "_quantized"].astype(np.float32)
        return (q - w[n + "_zero_point"].astype(np.float32)) * w[n + "_scale"]

    def t(a):
        return torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)

    r = math.sqrt(32.0)  # training/latejoint.py folds 1/sqrt(head size) into the query projection
    return {
        "q": (t(w["q.w"].T * r), t(w["q.b"] * r)),
        "k": (t(w["k.w"].T), t(w["k.b"])),
        "v": (t(w["v.w"].T), t(w["v.b"])),
        "o": (t(deq("o.w").T), t(w["o.b"])),
        "ln1": (t(w["ln1.g"]), t(w["ln1.b"])),
        "i": (t(deq("i.w").T), t(w["i.b"])),
        "o2": (t(deq("o2.w").T), t(w["o2.b"])),
        "ln2": (t(w["ln2.g"]), t(w["ln2.b"])),
        "pool": (t(deq("pool.w").T), t(w["pool.b"])),
        "cls": (t(w["cls.w"].T), t(w["cls.b"])),
    }


def _put(module, pair) -> None:
    module.weight.data.copy_(pair[0])
    module.bias.data.copy_(pair[1])


def load_layer(layer, lw: dict) -> None:
    a = layer.attention
    for mod, key in [
        (a.self.query, "q"),
        (a.self.key, "k"),
        (a.self.value, "v"),
        (a.output.dense, "o"),
        (a.output.LayerNorm, "ln1"),
        (layer.intermediate.dense, "i"),
        (layer.output.dense, "o2"),
        (layer.output.LayerNorm, "ln2"),
    ]:
        _put(mod, lw[key])


def make_head(seed: int = 13, layers: int = 1, init: str = "minilm"):
    import torch
    from torch import nn
    from transformers import AutoModelForSequenceClassification

    from reranker.training.distill import default_student
    from reranker.training.fastbert import ClsOnlyBert

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            student = default_student()
            base = AutoModelForSequenceClassification.from_pretrained(student, num_labels=1)
            self.fb = ClsOnlyBert(base)  # its attention helpers only
            last = base.bert.encoder.layer[-1]
            self.full = nn.ModuleList([copy.deepcopy(last) for _ in range(layers)])
            self.cls = copy.deepcopy(last)
            self.pooler = base.bert.pooler
            self.classifier = base.classifier
            self.seg = nn.Parameter(torch.zeros(base.config.hidden_size))
            self.gated = init == "late"
            if self.gated:
                lw = late_weights()
                for layer in [*self.full, self.cls]:
                    load_layer(layer, lw)
                _put(self.pooler.dense, lw["pool"])
                _put(self.classifier, lw["cls"])
                self.gates = nn.Parameter(torch.zeros(layers, base.config.hidden_size))
            del self.fb.layers, self.fb.emb, self.fb.pooler, self.fb.classifier

        def forward(self, x, mask, is_product):
            x = x + is_product.unsqueeze(-1).to(x.dtype) * self.seg
            bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for i, layer in enumerate(self.full):
                y = self.fb._attend(layer, x, x, bias)
                x = x + self.gates[i] * (y - x) if self.gated else y
            c = self.fb._attend_cls(self.cls, x[:, :1, :], x, mask)[:, 0, :]
            return self.classifier(torch.tanh(self.pooler.dense(c))).view(-1)

    return Head()


def training_lists(aug_size=None, seed: int = 13) -> list[tuple[str, list[tuple[str, float]]]]:
    """(query, [(product id, teacher score)]) lists: judged train pairs (held-out slice excluded)
    and augmented ones (a seeded cut of whole lists when ``aug_size``)."""
    out: dict[tuple[str, str], list] = {}
    t = pq.read_table(MEMBERS, columns=["query", "product_id", "score"]).to_pydict()
    for q, p, s in zip(t["query"], t["product_id"], t["score"], strict=True):
        out.setdefault(("j", q), []).append((str(p), float(s)))
    aug: dict[tuple[str, str], list] = {}
    for f in sorted(glob.glob(AUGMENTED)):
        t = pq.read_table(f, columns=["query", "product_id", "score"]).to_pydict()
        for q, p, s in zip(t["query"], t["product_id"], t["score"], strict=True):
            aug.setdefault(("a", q), []).append((str(p), float(s)))
    keys = sorted(aug)
    np.random.default_rng(seed).shuffle(keys)
    n = 0
    for k in keys:
        if aug_size is not None and n >= aug_size:
            break
        out[k] = aug[k]
        n += len(aug[k])
    return [(k[1], v) for k, v in sorted(out.items())]


def score(model, feats, queries, pids, bs: int = 256) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(pids), bs):
            out.append(model(*feats.batch(queries[i : i + bs], pids[i : i + bs])).numpy())
    model.train()
    return np.concatenate(out)


def train(args) -> None:
    import torch

    from reranker.training.losses import listwise_packed

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    feats = Feats(args.work)
    data = training_lists(args.aug_size, args.seed)
    print(f"{len(data)} lists, {sum(len(v) for _, v in data)} pairs", flush=True)
    rng = np.random.default_rng(args.seed)
    order = np.concatenate([rng.permutation(len(data)) for _ in range(math.ceil(args.epochs))])
    order = order[: int(len(data) * args.epochs)]
    steps = len(order) // args.lists_per_step
    if args.max_steps:
        steps = min(steps, args.max_steps)
    model = make_head(args.seed, args.layers, args.init)
    named = list(model.named_parameters())
    gates = [p for n, p in named if n in ("gates", "seg")]
    rest = [p for n, p in named if n not in ("gates", "seg")]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": gates, "lr": args.gate_lr, "weight_decay": 0.0}],
        lr=args.lr,
        weight_decay=0.01,
    )
    warm = max(1, steps // 20)

    def schedule(s: int) -> float:
        return min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start, ck = 0, out / "ckpt.pt"
    if ck.exists():
        st = torch.load(ck)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start = st["step"]
        print("resumed at", start, flush=True)
    t0, run = time.time(), 0.0
    for step in range(start, steps):
        lo = step * args.lists_per_step
        chunk = [data[i] for i in order[lo : lo + args.lists_per_step]]
        qs = [q for q, v in chunk for _ in v]
        ps = [p for _, v in chunk for p, _ in v]
        loss = listwise_packed(model(*feats.batch(qs, ps)), [[s for _, s in v] for _, v in chunk])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step > start else loss.item()
        if (step + 1) % 50 == 0:
            g = f" gates {model.gates.abs().mean().item():.3f}" if model.gated else ""
            rate = (time.time() - t0) / (step + 1 - start)
            print(f"step {step + 1}/{steps} loss {run:.4f}{g} {rate:.2f}s/step", flush=True)
        if (step + 1) % 500 == 0 or step + 1 == steps:
            state = {"model": model.state_dict(), "opt": opt.state_dict()}
            torch.save({**state, "sched": sched.state_dict(), "step": step + 1}, f"{ck}.tmp")
            os.replace(f"{ck}.tmp", ck)
    torch.save(model.state_dict(), out / "head.pt")
    for name, f in SETS.items():
        t = pq.read_table(f).to_pydict()
        pids = [str(p) for p in t["product_id"]]
        s = score(model, feats, t["query"], pids)
        cols = {"query": t["query"], "product_id": pids, "relevance": t["relevance"], "score": s}
        pq.write_table(pa.table(cols), out / f"scores_{name}.parquet")
    print("done", round(time.time() - t0), "s", flush=True)


# ------------------------------------------------------------------ evaluation
def late_scores(work: Path, name: str) -> dict:
    """The shipped late student's int8 scores (the default's first stage) of a judged file."""
    from reranker.late import LateCrossEncoder
    from reranker.training.evaluate import load_judged

    path = work / f"late_{name}.pkl"
    if path.exists():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    t = pq.read_table(DATA / "products.parquet", columns=["product_id", "title"]).to_pydict()
    titles = {str(p): s for p, s in zip(t["product_id"], t["title"], strict=True)}
    late = LateCrossEncoder(LATE, variant="int8")
    out = {}
    for q, (ids, _) in load_judged(SETS[name]).queries.items():
        raw = late.score(q, [titles[p] for p in ids]).raw
        out.update({(q, p): float(r) for p, r in zip(ids, raw, strict=True)})
    with open(path, "wb") as fh:
        pickle.dump(out, fh)
    return out


def cascade(first: np.ndarray, second: np.ndarray, k: int, w: float) -> np.ndarray:
    """The default's order (``reranker/cascade.py``): the best ``k`` by ``first`` rescored
    ``second + w * first``, the rest below in the first's order."""
    from reranker.cascade import place_rescored, split_best

    head, rest = split_best(first, k)
    return place_rescored(first, head, rest, second[head] + w * first[head])


def evaluate_run(args) -> None:
    from reranker.training.evaluate import evaluate, load_judged
    from reranker.training.paired import compare, read_per_query

    work, run = Path(args.work), Path(args.run)
    forms = [("late", None, None), ("head", None, None)] + [
        (f"k{k}-w{w}", k, w) for k in (12, 20) for w in (0.25, 0.5, 1.0)
    ]
    res = {}
    for name, f in SETS.items():
        judged = load_judged(f)
        late = late_scores(work, name)
        t = pq.read_table(run / f"scores_{name}.parquet").to_pydict()
        head = dict(zip(zip(t["query"], t["product_id"], strict=True), t["score"], strict=True))
        shipped = read_per_query(Path(args.shipped) / f"pq_default-{name}.parquet")
        for label, k, w in forms:

            def scorer(q, ids, label=label, k=k, w=w, late=late, head=head):
                a = np.array([late[(q, p)] for p in ids])
                b = np.array([head[(q, p)] for p in ids])
                return a if label == "late" else b if label == "head" else cascade(a, b, k, w)

            per_query: dict = {}
            m = evaluate(judged, scorer, per_query=per_query)
            for v in per_query.values():
                v.setdefault("e2e_ndcg10", None)
            c = compare(per_query, shipped)
            res[f"{name}/{label}"] = {
                "pair_accuracy": m.pair_accuracy,
                "ndcg10": m.ndcg10,
                "minus_shipped_default": {x: c[x] for x in ("pair_accuracy", "ndcg10")},
            }

            def show(d):
                return f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"

            print(
                f"{name:8s} {label:11s} pair acc. {m.pair_accuracy:.4f} NDCG@10 {m.ndcg10:.4f}"
                f" | - default: {show(c['pair_accuracy'])} {show(c['ndcg10'])}",
                flush=True,
            )
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


def time_run(args) -> None:
    """ONNX export (dynamic int8, per channel) and the head's time on K pairs of a query against
    the shipped cross-encoder's on 12, one query at a time, alternating, 2 threads."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from reranker.crossencoder import CrossEncoder

    run = Path(args.run)
    model = make_head(13, args.layers, args.init)
    model.load_state_dict(torch.load(run / "head.pt"))
    model.eval()
    f32, i8 = run / "head.onnx", run / "head.int8.onnx"
    x = torch.randn(4, 30, 384)
    ones = torch.ones(4, 30, dtype=torch.int64)
    dyn = {n: {0: "pairs", 1: "tokens"} for n in ("x", "mask", "is_product")}
    torch.onnx.export(
        model, (x, ones, ones), str(f32), input_names=["x", "mask", "is_product"],
        output_names=["logits"], dynamic_axes=dyn, opset_version=17, dynamo=False,
    )
    quantize_dynamic(str(f32), str(i8), weight_type=QuantType.QInt8, per_channel=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(i8), so, providers=["CPUExecutionProvider"])
    feats = Feats(args.work)
    t = pq.read_table(DATA / "products.parquet", columns=["product_id", "title"]).to_pydict()
    title = {str(a): b for a, b in zip(t["product_id"], t["title"], strict=True)}
    cross = CrossEncoder(CROSS)
    t = pq.read_table(SETS["dev"]).to_pydict()
    by_query: dict[str, list[str]] = {}
    for q, p in zip(t["query"], t["product_id"], strict=True):
        by_query.setdefault(q, []).append(str(p))
    queries = sorted(by_query)[: args.queries]
    every = list(feats.row)
    rng = np.random.default_rng(0)
    res = {}
    for k in args.k:
        th, tc = [], []
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            for q in queries:
                pids = (by_query[q] + list(rng.choice(every, k, replace=False)))[:k]
                t0 = time.perf_counter()
                x, mask, is_product = feats.batch_np([q] * k, pids)
                sess.run(None, {"x": x, "mask": mask, "is_product": is_product})
                th.append((time.perf_counter() - t0) * 1e3)
                if k == 12:
                    t0 = time.perf_counter()
                    cross.score(q, [title[p] for p in pids[:12]])
                    tc.append((time.perf_counter() - t0) * 1e3)
        th, tc = th[len(queries) :], tc[len(queries) :]
        res[f"head_k{k}"] = {"p50": float(np.median(th)), "p99": float(np.percentile(th, 99))}
        if tc:
            res["cross_k12"] = {"p50": float(np.median(tc)), "p99": float(np.percentile(tc, 99))}
        print(k, {n: res[n] for n in res if n.endswith(f"k{k}")}, flush=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--index-dir", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("train")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--init", default="minilm", choices=["minilm", "late"])
    p.add_argument("--aug-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--gate-lr", type=float, default=1e-3)
    p.add_argument("--lists-per-step", type=int, default=8)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("eval")
    p.add_argument("--work", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--shipped", required=True)
    p.add_argument("--json", required=True)
    p = sub.add_parser("time")
    p.add_argument("--work", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--init", default="minilm", choices=["minilm", "late"])
    p.add_argument("--k", type=int, nargs="+", default=[12, 20])
    p.add_argument("--queries", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    {"prep": prep, "train": train, "eval": evaluate_run, "time": time_run}[args.cmd](args)


if __name__ == "__main__":
    main()
