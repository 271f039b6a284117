"""Training: soft-target teacher, augmentation, teacher labelling, margin-MSE distillation, export.

Needs the ``[train]`` extra (torch, transformers, sentence-transformers); the serving runtime
never imports this package.
"""

from reranker._extras import require

require("torch", "train")
require("transformers", "train")
