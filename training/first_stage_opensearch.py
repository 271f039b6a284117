"""The OpenSearch first stage with the standard analyzer, with the standard tokenizer and
stemming (the mapping until the seventeenth session), with the mapping now (the embedded index's
tokens: letters and digits apart, stemmed), and that with fuzzy matching (``AUTO``, and
``AUTO:4,7`` as the retriever now queries), those three with OpenSearch's own BM25 (k1 1.2, b
0.75) and the mapping's now (k1 0.3, b 0.4, the embedded index's since the eighteenth session):
share of a query's judged products in the top 100, and end-to-end NDCG@10 in retrieval order
(no reranker).

    scripts/opensearch.sh start
    python -m reranker.training.first_stage_opensearch --catalog demo/products.parquet \\
        --judged ../shared/data/homedepot/dev.parquet \\
        --output training/results/first_stage_opensearch_dev.json

Indexes the catalog four times (aliases ``kd-fs-…``, replaced if present).
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
    args = ap.parse_args()

    options = ConnectionOptions(args.url)
    catalog = read_catalog(args.catalog)
    judged = load_judged(args.judged).evaluable()
    result = {"judged": str(args.judged), "queries": len(judged), "k": 100, "sets": {}}
    for name, mapping, bm25, fuzziness in (
        ("standard", standard_mapping, OPENSEARCH_BM25, None),
        ("stemmed", stemmed_mapping, OPENSEARCH_BM25, None),
        ("split", SPLIT_MAPPING, OPENSEARCH_BM25, None),
        ("split, fuzziness AUTO", None, None, "AUTO"),
        ("split, fuzziness AUTO:4,7", None, None, "AUTO:4,7"),
        ("split, k1 0.3 b 0.4", SPLIT_MAPPING, (0.3, 0.4), None),
        ("split, k1 0.3 b 0.4, fuzziness AUTO:4,7", None, None, "AUTO:4,7"),
    ):
        if mapping is not None:
            opensearch.mapping = mapping  # what index_catalog_opensearch creates the index with
            index = "kd-fs-" + re.sub(r"[^a-z0-9]+", "-", name)
            try:
                index_catalog_opensearch(
                    catalog, options, index, overwrite=True, bm25_k1=bm25[0], bm25_b=bm25[1]
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
