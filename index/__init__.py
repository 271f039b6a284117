"""First stage: the retriever interface, the embedded BM25 index, catalog → index."""

from reranker.index.base import Candidate, Retriever
from reranker.index.bm25 import BM25Index

__all__ = ["BM25Index", "Candidate", "Retriever"]
