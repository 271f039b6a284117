"""Regenerate golden_bm25.json with rank-bm25 alone (independent of reranker.index)."""

import csv
import json
import re
from pathlib import Path

import snowballstemmer
from rank_bm25 import BM25Okapi

HERE = Path(__file__).parent
QUERIES = [
    "cordless drill",
    "garden hose nozzle",
    "led light bulb",
    "toilet seat white",
    "twin garden hose",
    "green green",
    "zebra",
    "drills",
    "seats elongated",
]


STEM = snowballstemmer.stemmer("english").stemWord


def tokens(s: str) -> list[str]:
    return [STEM(t) for t in re.findall(r"[a-z]+|[0-9]+", s.lower())]


rows = list(csv.DictReader(open(HERE / "catalog.csv")))
corpus = [
    tokens(" ".join(v for v in (r["title"], r["brand"], r["color"], r["material"]) if v))
    for r in rows
]
bm25 = BM25Okapi(corpus, k1=0.3, b=0.4, epsilon=0.25)  # reranker.index.bm25.DEFAULT_K1, DEFAULT_B
golden = {}
for q in QUERIES:
    scores = bm25.get_scores(tokens(q))
    hits = [i for i, d in enumerate(corpus) if set(tokens(q)) & set(d)]
    hits.sort(key=lambda i: (-scores[i], rows[i]["product_id"]))
    golden[q] = [[rows[i]["product_id"], float(scores[i])] for i in hits[:10]]
(HERE / "golden_bm25.json").write_text(json.dumps(golden, indent=1))
