"""The OpenSearch first stage with the standard analyzer, with the standard tokenizer and
stemming (the mapping until the seventeenth session), with the mapping now (the embedded index's
tokens: letters and digits apart, stemmed), and that with fuzzy matching (``AUTO``, and
``AUTO:4,7`` as the retriever now queries), those three with OpenSearch's own BM25 (k1 1.2, b
0.75) and the mapping's now (k1 0.3, b 0.4, the embedded index's since the eighteenth session):
share of a query's judged products in the top 100, and end-to-end NDCG@10 in retrieval order
(no reranker); and the hybrid index (BM25 fused with the shipped embedder's vectors, as the
embedded index fuses them; the default of ``reranker index --backend opensearch`` since the
nineteenth session).

    scripts/opensearch.sh start
    python -m reranker.training.first_stage_opensearch --catalog demo/products.parquet \\
        --judged ../shared/data/homedepot/dev.parquet \\
        --output training/results/first_stage_opensearch_dev.json

Indexes the catalog five times (aliases ``kd-fs-…``, replaced if present); ``--only hybrid``
measures that one alone.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from reranker.catalog import read_catalog
from reranker.index import opensearch
from reranker.index.opensearch import (
    ConnectionOptions,
    OpenSearchRetriever,
    index_catalog_opensearch,
)
from reranker.training.evaluate import load_judged, ndcg_at

SPLIT_MAPPING = opensearch.mapping
#: OpenSearch's own BM25 parameters (the mapping's until the eighteenth session)
OPENSEARCH_BM25 = (1.2, 0.75)


def stemmed_mapping(*args, **kwargs) -> dict:
    """The mapping before the seventeenth session: the standard tokenizer, stemmed."""
    m = SPLIT_MAPPING(*args, **kwargs)
    analysis = m["settings"]["index"]["analysis"]
    analysis.pop("tokenizer")
    analysis["analyzer"][opensearch.ANALYZER]["tokenizer"] = "standard"
    return m


def standard_mapping(*args, **kwargs) -> dict:
    """The mapping before stemming: every searched field on the standard analyzer."""
    m = SPLIT_MAPPING(*args, **kwargs)
    m["settings"]["index"].pop("analysis")

    def plain(props: dict) -> None:
        for v in props.values():
            if v.get("analyzer"):
                v["analyzer"] = "standard"
            plain(v.get("properties", {}))

    plain(m["mappings"]["properties"])
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--judged", required=True)
    ap.add_argument("--url", default="http://127.0.0.1:9200")
    ap.add_argument("--output", required=True)
    ap.add_argument("--only", help="Measure only the sets whose name contains this (an index a "
                    "set reuses must then exist from an earlier run).")  # fmt: skip
    args = ap.parse_args()

    options = ConnectionOptions(args.url)
    catalog = read_catalog(args.catalog)
    judged = load_judged(args.judged).evaluable()
    result = {"judged": str(args.judged), "queries": len(judged), "k": 100, "sets": {}}
    embedder = None
    for name, mapping, bm25, fuzziness, dense in (
        ("standard", standard_mapping, OPENSEARCH_BM25, None, False),
        ("stemmed", stemmed_mapping, OPENSEARCH_BM25, None, False),
        ("split", SPLIT_MAPPING, OPENSEARCH_BM25, None, False),
        ("split, fuzziness AUTO", None, None, "AUTO", False),
        ("split, fuzziness AUTO:4,7", None, None, "AUTO:4,7", False),
        ("split, k1 0.3 b 0.4", SPLIT_MAPPING, (0.3, 0.4), None, False),
        ("split, k1 0.3 b 0.4, fuzziness AUTO:4,7", None, None, "AUTO:4,7", False),
        ("hybrid (the shipped embedder), k1 0.3 b 0.4, AUTO:4,7", SPLIT_MAPPING, (0.3, 0.4),
         "AUTO:4,7", True),
    ):  # fmt: skip
        if mapping is not None:
            index = "kd-fs-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")
        if args.only and args.only not in name:
            continue
        if mapping is not None:
            if dense and embedder is None:
                from reranker.embedder import TextEmbedder
                from reranker.models import packaged_embedder_dir

                embedder = TextEmbedder(packaged_embedder_dir())
            opensearch.mapping = mapping  # what index_catalog_opensearch creates the index with
            try:
                index_catalog_opensearch(
                    catalog,
                    options,
                    index,
                    overwrite=True,
                    bm25_k1=bm25[0],
                    bm25_b=bm25[1],
                    embedder=embedder if dense else None,
                    progress=True,
                )
            finally:
                opensearch.mapping = SPLIT_MAPPING
        retriever = OpenSearchRetriever(options, index)
        retriever.fuzziness = fuzziness  # the one studied (None: words as typed)
        recall, e2e = [], []
        for q, (ids, rel) in judged.items():
            rel_of = dict(zip(ids, rel, strict=True))
            found = [c.product.id for c in retriever.retrieve(q, 100) if c.product.id in rel_of]
            recall.append(len(found) / len(ids))
            e2e.append(ndcg_at([rel_of[p] for p in found], rel))
        result["sets"][name] = {
            "recall": round(float(np.mean(recall)), 4),
            "first_stage_e2e": round(float(np.mean(e2e)), 4),
        }
        print(name, result["sets"][name], flush=True)
    Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
