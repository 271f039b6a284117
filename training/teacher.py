"""Soft-target teacher: fine-tune a Hugging Face model as a relevance classifier.

Judged relevance is mapped into [0, 1] (``(relevance - low) / (high - low)``) and the single
logit is trained with binary cross-entropy. Encoders (BERT, MPNet, ...) and decoder LLMs (through
their sequence-classification head, last-token pooling, pad token set) both work.
Training is resumable: a checkpoint with optimizer and scheduler state is written every
``checkpoint_minutes`` and picked up by the next run with the same output directory.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reranker.training.data import load_judged_pairs, soft_targets
from reranker.training.precision import autocast, resolve_precision


@dataclass
class TeacherArgs:
    model: str
    train: str
    catalog: str
    output: str
    fields: list[str] = field(default_factory=lambda: ["brand", "color", "material"])
    max_length: int = 64
    batch_size: int = 16
    lr: float = 2e-5
    warmup: float = 0.1
    epochs: int = 1
    max_pairs: int | None = None
    seed: int = 13
    relevance_range: tuple[float, float] = (1.0, 3.0)
    checkpoint_minutes: float = 10.0
    threads: int | None = None
    layers: int | None = None  # keep only the first N transformer layers
    lora_r: int | None = None  # train LoRA adapters of this rank (peft) instead of every weight
    precision: str = "auto"  # fp32, bf16 (autocast), auto: bf16 where the CPU has it natively


def keep_layers(model, n: int) -> None:
    """Keep the first ``n`` transformer layers of a Hugging Face model (encoders: BERT, MPNet;
    decoders: Llama-style ``model.layers``)."""
    from reranker.errors import RerankerError

    base = model.base_model
    owner, name = (base.encoder, "layer") if hasattr(base, "encoder") else (base, "layers")
    stack = getattr(owner, name, None)
    if stack is None:
        raise RerankerError(f"cannot find the layer stack of a {type(model).__name__}")
    if not 1 <= n <= len(stack):
        raise RerankerError(f"--layers must be 1..{len(stack)}, not {n}")
    setattr(owner, name, stack[:n])
    model.config.num_hidden_layers = n


def encode_pairs(tokenizer, queries, texts, max_length: int):
    """Token tensors of (query, product text) pairs: the tokenizer's own pair form for encoders
    (``[CLS] q [SEP] t [SEP]``); for a decoder LLM, whose tokenizer has no separator and would
    run the two texts together, one prompt ``Query: q\nProduct: t`` whose last token is
    classified."""
    if tokenizer.sep_token is None:
        prompts = [f"Query: {q}\nProduct: {t}" for q, t in zip(queries, texts, strict=True)]
        return tokenizer(
            prompts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
    return tokenizer(
        list(queries),
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )


def _from_pretrained(cls, path: str, **kwargs):
    """``cls.from_pretrained`` of a model folder, or of a GGUF file (e.g. a quantised decoder LLM
    such as SmolLM2-135M-Instruct: transformers dequantises it to float32; needs ``gguf``)."""
    p = Path(path)
    if p.suffix == ".gguf":
        from reranker._extras import require

        require("gguf", "train")
        loaded = cls.from_pretrained(str(p.parent), gguf_file=p.name, **kwargs)
        if isinstance(loaded, torch.nn.Module):
            _plain_weights(loaded, p)
        return loaded
    return cls.from_pretrained(path, **kwargs)


def _plain_weights(model, path: Path) -> None:
    """A GGUF model dequantised to plain float tensors, as a model read from a folder: without
    this, transformers still marks it as GGUF-quantised and refuses to save the fine-tuned
    weights (`save_pretrained`: "quantized with gguf and is not serializable")."""
    from reranker.errors import RerankerError

    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Gguf")]
    if packed:
        raise RerankerError(
            f"{path}: transformers kept {len(packed)} layers in packed GGUF blocks (e.g. "
            f"{packed[0]}), which cannot be fine-tuned; uninstall `kernels` so that it "
            "dequantises the model"
        )
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_model(path: str, args: TeacherArgs | None = None, adapter: Path | None = None):
    """Tokenizer and model; with ``args.lora_r`` the model is wrapped in LoRA adapters (new, or
    ``adapter``'s when resuming)."""
    tokenizer = _from_pretrained(AutoTokenizer, path)
    model = _from_pretrained(AutoModelForSequenceClassification, path, num_labels=1)
    if tokenizer.pad_token is None:  # decoder LLMs: pad with EOS, classify the last real token
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if args is not None and args.layers:
        keep_layers(model, args.layers)
    if args is not None and args.lora_r:
        from reranker._extras import require

        require("peft", "train")
        from peft import LoraConfig, PeftModel, TaskType, get_peft_model

        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        else:
            config = LoraConfig(
                task_type=TaskType.SEQ_CLS,  # the classification head stays fully trainable
                r=args.lora_r,
                lora_alpha=2 * args.lora_r,
                lora_dropout=0.05,
                target_modules="all-linear",
            )
            model = get_peft_model(model, config)
    return tokenizer, model


def train_teacher(args: TeacherArgs) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision)
    out = Path(args.output)
    ckpt = out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)

    pairs = load_judged_pairs(args.train, args.catalog, args.fields)
    targets = soft_targets(pairs.relevance, *args.relevance_range)
    order = np.random.default_rng(args.seed).permutation(len(pairs.query))
    if args.max_pairs:
        order = order[: args.max_pairs]
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    total_steps = len(batches) * args.epochs

    start_from = ckpt if (ckpt / "state.pt").exists() else None
    if args.lora_r:  # a LoRA checkpoint holds the adapters; the base weights are args.model's
        tokenizer, model = _load_model(args.model, args, adapter=start_from)
    else:
        tokenizer, model = _load_model(str(start_from or args.model), args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup_steps = int(total_steps * args.warmup)

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    step = 0
    if start_from:
        state = torch.load(ckpt / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        random.seed(args.seed + step)
        torch.manual_seed(args.seed + step)
    else:
        torch.manual_seed(args.seed)

    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    last_save = time.monotonic()
    bar = tqdm(total=total_steps, initial=step, desc=f"teacher ({precision})", unit="batch")
    losses: list[float] = []
    while step < total_steps:
        idx = batches[step % len(batches)]
        enc = encode_pairs(
            tokenizer, [pairs.query[i] for i in idx], [pairs.text[i] for i in idx], args.max_length
        )
        with autocast(precision):
            logits = model(**enc).logits.squeeze(-1).float()
        loss = loss_fn(logits, torch.tensor(targets[idx], dtype=torch.float32))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if time.monotonic() - last_save > args.checkpoint_minutes * 60 and step < total_steps:
            _save(model, tokenizer, ckpt, optimizer, scheduler, step)
            last_save = time.monotonic()
    bar.close()
    if args.lora_r:  # a plain model for export and labelling: adapters merged into the weights
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = asdict(args) | {
        "precision_used": precision,
        "steps": step,
        "final_loss_last100": float(np.mean(losses[-100:])) if losses else None,
    }
    (out / "teacher_args.json").write_text(json.dumps(meta, indent=2))
    return out


def _save(model, tokenizer, ckpt: Path, optimizer, scheduler, step: int) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
        tmp / "state.pt",
    )
    if ckpt.exists():
        old = ckpt.with_name(ckpt.name + ".old")
        os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        import shutil

        shutil.rmtree(old)
    else:
        os.replace(tmp, ckpt)
