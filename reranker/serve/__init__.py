"""The rerank service (the ``[serve]`` extra): one scoring core, one module per wire dialect.

| module | what |
|---|---|
| ``core`` | settings, metrics, the model's worker (micro-batching), deadline, adaptive k |
| ``native`` | ``POST /rerank`` ``{query, documents}`` and ``POST /search`` |
| ``tei`` | Hugging Face TEI's ``POST /rerank`` ``{query, texts}`` (told apart by the body) |
| ``cohere`` | ``POST /v1/rerank``, ``/v2/rerank`` (Cohere SDK, Jina, OpenSearch's connector) |
| ``app`` | the FastAPI app around them: health, metrics, the web demo, the body-size limit |
"""

from reranker.serve.app import create_app
from reranker.serve.core import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
