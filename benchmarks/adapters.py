"""Adapters on offline data: NOLA / SVFit / FLoRA / TLoRA / our LoRA vs PEFT LoRA, and
reversible merging (RMM) vs PEFT's add_weighted_adapter merges at equal storage.

(a) Text: the embedded MiniLM (all-MiniLM-L6-v2) fine-tuned to tell which of 8 CPython
    documentation topics (``pydoc_data.topics``, passages as in ``lowrank.data``) a
    32-token window of a passage comes from. Passages are split by CRC32 (mod 4: 0 test,
    1 validation, 2-3 train); each passage gives up to 3 windows; training draws one window of
    every train passage per epoch; validation and test score every window. Layers 0-4 stay
    frozen and their outputs are cached; the adapters go on ``query`` and ``value`` of layer 5
    ("full" = all weights of layer 5), with a mean-pooled linear head trained in every row.
    Each method gets the same 3-point learning-rate grid (x3 steps around its usual LR); the LR
    with the best validation accuracy (seed 0) is rerun on more seeds and reported on test as
    mean +- std.
(b) Vision: a small CNN trained on scikit-learn's bundled digits 0-4, adapted to digits 5-9
    (new head + adapters on both convs): FLoRA vs PEFT conv LoRA vs full fine-tuning.
(c) RMM: four binary text tasks, one PEFT LoRA (r=4, query/value of layer 5) each, trained
    under one *frozen, shared* random head, so the adapters carry all of the accuracy (no
    adapter = chance). Per-task test accuracy of each adapter alone, after RMM recovery, and
    after PEFT's merges, grouped by stored numbers: the size of one r=4 adapter (RMM with k
    basis matrices of rank rho, k rho = 4, vs PEFT linear / SVD / TIES / DARE at rank 4) and
    the size of all four adapters (k rho = 16, vs PEFT cat / TIES-SVD / DARE-SVD at rank 16).

    Text, second protocol (``text-frozen``): the same task under one shared, frozen random
    head, so that only the adapted layer can fit the labels (no adapter = chance).

    python benchmarks/adapters.py [--parts vision text text-frozen rmm] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_results  # noqa: E402

import lowrank.adapt as la  # noqa: E402

TOPICS = ["specialnames", "compound", "types", "debugger", "string-methods", "typesseq",
          "formatstrings", "typesmapping"]
SEQ_LEN = 32      # tokens per window, [CLS] and [SEP] included
MAX_WINDOWS = 3   # windows per passage
TOP = 5  # layers >= TOP are adapted; outputs of layers < TOP are cached
TARGETS = ["query", "value"]
HEAD_LR = 5e-3
PARTS = ("vision", "text", "text-frozen", "rmm")
BATCH = 16


# ----------------------------------------------------------------------------- text data
def topic_passages() -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    from lowrank.data.default_text import _chunk, _paragraphs

    return {k: _chunk(_paragraphs(topics[k])) for k in TOPICS}


def split_of(p: str) -> str:
    r = zlib.crc32(p.encode("utf-8")) % 4
    return "test" if r == 0 else "val" if r == 1 else "train"


class Cached:
    """Hidden states after layer TOP-1 of MiniLM for the windows of each passage (once)."""

    def __init__(self, lm, texts: list[str]) -> None:
        tok = lm.tokenizer
        ids, owner = [], []
        for t, text in enumerate(texts):
            toks = tok(text, add_special_tokens=False)["input_ids"]
            body = SEQ_LEN - 2
            chunks = [toks[i:i + body] for i in range(0, len(toks), body)][:MAX_WINDOWS]
            chunks = [c for j, c in enumerate(chunks) if j == 0 or len(c) >= 8]
            for c in chunks:
                ids.append([tok.cls_token_id, *c, tok.sep_token_id])
                owner.append(t)
        x = torch.full((len(ids), SEQ_LEN), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), SEQ_LEN, dtype=torch.long)
        for i, row in enumerate(ids):
            x[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        hs = []
        with torch.no_grad():
            for i in range(0, len(ids), 64):
                out = lm.model(input_ids=x[i:i + 64], attention_mask=mask[i:i + 64],
                               output_hidden_states=True)
                hs.append(out.hidden_states[TOP])
        self.h, self.mask = torch.cat(hs), mask
        self.windows: dict[str, list[int]] = {}
        for i, t in enumerate(owner):
            self.windows.setdefault(texts[t], []).append(i)


@dataclasses.dataclass
class Split:
    """Training passages (window index lists) and flattened evaluation windows."""

    train: list[list[int]]
    ytrain: torch.Tensor
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (window idx, labels)


def make_split(cache: Cached, items: list[tuple[str, int]], eval_windows: int = MAX_WINDOWS
               ) -> Split:
    train = [(cache.windows[p], c) for p, c in items if split_of(p) == "train"]
    evals = {}
    for name in ("val", "test"):
        pairs = [(i, c) for p, c in items if split_of(p) == name
                 for i in cache.windows[p][:eval_windows]]
        evals[name] = (torch.tensor([i for i, _ in pairs]), torch.tensor([c for _, c in pairs]))
    return Split([w for w, _ in train], torch.tensor([c for _, c in train]), evals)


class Top(nn.Module):
    """Layers TOP.. of MiniLM + mean pooling + a linear head (seeded init)."""

    def __init__(self, bert: nn.Module, classes: int, seed: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(bert.encoder.layer[TOP:]))
        g = torch.Generator().manual_seed(1000 + seed)
        self.head = nn.Linear(bert.config.hidden_size, classes)
        with torch.no_grad():
            self.head.weight.normal_(0, 0.02, generator=g)
            self.head.bias.zero_()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            out = layer(h, attention_mask=ext)
            h = out[0] if isinstance(out, tuple) else out
        m = mask[..., None].float()
        return self.head((h * m).sum(1) / m.sum(1))


def train(model: nn.Module, params: list[tuple[list[nn.Parameter], float]], cache: Cached,
          split: Split, epochs: int, seed: int) -> float:
    """AdamW on (params, lr) groups, one random window of each train passage per epoch;
    returns seconds."""
    groups = [{"params": p, "lr": lr} for p, lr in params if p]
    if not groups:
        return 0.0
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    n = len(split.train)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        pick = torch.tensor([w[int(torch.randint(len(w), (1,), generator=g))]
                             for w in split.train])
        for i in range(0, n, BATCH):
            idx = perm[i:i + BATCH]
            win = pick[idx]
            loss = nn.functional.cross_entropy(model(cache.h[win], cache.mask[win]),
                                               split.ytrain[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(model: nn.Module, cache: Cached, idx: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(cache.h[idx[i:i + 128]], cache.mask[idx[i:i + 128]]).argmax(-1)
                      for i in range(0, len(y), 128)])
    return float((pred == y).float().mean())


def text_rows(lm, cache: Cached, args, frozen_head: bool = False) -> list[dict]:
    from peft import LoraConfig, get_peft_model

    tp = topic_passages()
    split = make_split(cache, [(p, c) for c, k in enumerate(TOPICS) for p in tp[k]])
    bert = lm.model
    rows: list[dict] = []
    print(f"  {len(split.train)} train passages, {len(split.evals['val'][1])} validation / "
          f"{len(split.evals['test'][1])} test windows", flush=True)

    def one(make, lr: float, seed: int) -> tuple[nn.Module, int, float, float]:
        torch.manual_seed(seed)
        model = Top(bert, len(TOPICS), seed)
        if frozen_head:
            model.head.load_state_dict(shared_head(bert, len(TOPICS)).state_dict())
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = make(model, seed)
        head = [] if frozen_head else list(model.head.parameters())
        for p in head:
            p.requires_grad_(True)
        sec = train(model, [(trainable, lr), (head, HEAD_LR)], cache, split, args.epochs, seed)
        val = evaluate(model, cache, *split.evals["val"])
        return model, sum(p.numel() for p in trainable), val, sec

    def run(label: str, make, lrs: tuple[float, ...], seeds: int) -> None:
        sweep = [one(make, lr, 0) for lr in lrs]
        best = max(range(len(lrs)), key=lambda i: sweep[i][2])
        model, count, _, sec = sweep[best]
        tests = [evaluate(model, cache, *split.evals["test"])]
        secs = [sec]
        for s in range(1, seeds):
            m, _, _, sec = one(make, lrs[best], s)
            tests.append(evaluate(m, cache, *split.evals["test"]))
            secs.append(sec)
        mean = statistics.mean(tests)
        std = statistics.stdev(tests) if len(tests) > 1 else 0.0
        rows.append({"task": "text", "head": "frozen" if frozen_head else "trained",
                     "method": label, "trainable": count, "accuracy": mean,
                     "std": std, "accuracies": tests, "lr": lrs[best], "lr_grid": list(lrs),
                     "val_by_lr": [v for _, _, v, _ in sweep], "seconds": statistics.mean(secs),
                     "seeds": len(tests)})
        print(f"  {label:26s} params {count:7d}  lr {lrs[best]:.0e} (val "
              f"{' '.join(f'{v:.3f}' for _, _, v, _ in sweep)})  test {100 * mean:.1f}"
              f" +- {100 * std:.1f} ({len(tests)} seeds)  {statistics.mean(secs):5.1f}s/run",
              flush=True)

    def ours(cfg):
        def make(model, seed):
            la.apply(model, dataclasses.replace(cfg, seed=seed))
            return list(la.trainable_parameters(model).values())
        return make

    def peft_lora(r):
        def make(model, seed):
            pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=TARGETS))
            return [p for n, p in pm.named_parameters() if p.requires_grad]
        return make

    def full(model, seed):
        for p in model.layers.parameters():
            p.requires_grad_(True)
        return list(model.layers.parameters())

    lora_lrs, full_lrs = (1e-3, 3e-3, 1e-2), (3e-5, 1e-4, 3e-4)
    nola_lrs, svfit_lrs = (3e-3, 1e-2, 3e-2), (3e-2, 1e-1, 3e-1)
    svfit = max(args.svfit_ranks)
    if frozen_head:  # the features must move further: each adapter grid one x3 step higher
        lora_lrs, nola_lrs, svfit_lrs = (3e-3, 1e-2, 3e-2), (1e-2, 3e-2, 1e-1), (1e-1, 3e-1, 1.0)
        s = 1 if args.quick else args.frozen_seeds
        run("no adapter", lambda m, seed: [], (0.0,), 1)
        run("full fine-tune (layer 5)", full, full_lrs, s)
        run("PEFT LoRA r=1", peft_lora(1), lora_lrs, s)
        run("PEFT LoRA r=4", peft_lora(4), lora_lrs, s)
        run(f"NOLA r=4 k={args.nola_basis}",
            ours(la.NOLA(rank=4, num_basis=args.nola_basis, targets=TARGETS)), nola_lrs, s)
        run(f"SVFit r={svfit}", ours(la.SVFit(rank=svfit, targets=TARGETS)), svfit_lrs, s)
        return finish(rows, split)
    core, extra = args.seeds, (1 if args.quick else args.extra_seeds)
    run("head only", lambda m, seed: [], (0.0,), core)
    run("full fine-tune (layer 5)", full, full_lrs, extra)
    run("PEFT LoRA r=1", peft_lora(1), lora_lrs, core)
    run("PEFT LoRA r=4", peft_lora(4), lora_lrs, core)
    run("PEFT LoRA r=8", peft_lora(8), lora_lrs, extra)
    run("ours LoRA r=4", ours(la.LoRA(rank=4, targets=TARGETS)), lora_lrs, extra)
    run("ours LoRA r=4 pissa", ours(la.LoRA(rank=4, init="pissa", targets=TARGETS)),
        (1e-4, 3e-4, 1e-3), extra)
    run(f"NOLA r=4 k={args.nola_basis}",
        ours(la.NOLA(rank=4, num_basis=args.nola_basis, targets=TARGETS)), nola_lrs, core)
    for r in args.svfit_ranks:
        run(f"SVFit r={r}", ours(la.SVFit(rank=r, targets=TARGETS)), svfit_lrs,
            core if r == svfit else extra)
    run("FLoRA r=4", ours(la.FLoRA(rank=4, targets=TARGETS)), lora_lrs, extra)
    run("TLoRA R=2", ours(la.TLoRA(rank=2, targets=TARGETS)), lora_lrs, extra)
    return finish(rows, split)


def finish(rows: list[dict], split: Split) -> list[dict]:
    for r in rows:
        r["n_train"] = len(split.train)
        r["n_val"], r["n_test"] = len(split.evals["val"][1]), len(split.evals["test"][1])
    return rows


# ----------------------------------------------------------------------------- RMM
def rmm_tasks(tp: dict[str, list[str]]) -> list[tuple[str, list[str], list[str]]]:
    from lowrank.data import other_domain_passages

    pydoc = [p for k in TOPICS for p in tp[k]]
    lic = other_domain_passages()
    return [
        ("licence vs pydoc", lic, pydoc[::3]),
        ("specialnames vs compound", tp["specialnames"], tp["compound"]),
        ("str methods vs seq/mapping", tp["string-methods"] + tp["formatstrings"],
         tp["typesseq"] + tp["typesmapping"]),
        ("debugger vs types", tp["debugger"], tp["types"]),
    ]


def shared_head(bert: nn.Module, classes: int = 2) -> nn.Linear:
    """A frozen random head shared by every run / task (seeded, unit-scale logits)."""
    hidden = bert.config.hidden_size
    head = nn.Linear(hidden, classes)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        head.weight.normal_(0, hidden ** -0.5, generator=g)
        head.bias.zero_()
    return head.requires_grad_(False)


def rmm_rows(lm, cache: Cached, args) -> list[dict]:
    from peft import LoraConfig, PeftModel, get_peft_model

    tasks = rmm_tasks(topic_passages())
    bert, rows, rank = lm.model, [], 4
    head = shared_head(bert)
    splits, tmp = [], Path(tempfile.mkdtemp(prefix="rmm-"))

    def fresh() -> Top:
        model = Top(bert, 2)
        model.head.load_state_dict(head.state_dict())
        return model.requires_grad_(False)

    for ti, (name, pos, neg) in enumerate(tasks):
        split = make_split(cache, [(p, 1) for p in pos] + [(p, 0) for p in neg],
                           eval_windows=2)
        splits.append(split)
        torch.manual_seed(ti)
        model = fresh()
        pm = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS))
        lora = [p for n, p in pm.named_parameters() if p.requires_grad and "lora_" in n]
        sec = train(model, [(lora, args.rmm_lr)], cache, split, args.rmm_epochs, ti)
        pm.save_pretrained(str(tmp / f"t{ti}"))
        print(f"  RMM task {ti} {name}: {len(split.train)} train passages, "
              f"{len(split.evals['test'][1])} test windows ({sec:.1f}s)", flush=True)

    peft_model = PeftModel.from_pretrained(fresh(), str(tmp / "t0"), adapter_name="t0")
    for ti in range(1, len(tasks)):
        peft_model.load_adapter(str(tmp / f"t{ti}"), adapter_name=f"t{ti}")
    names = [f"t{i}" for i in range(len(tasks))]

    def factors(adapter: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for mname, m in peft_model.named_modules():
            if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) and adapter in \
                    m.lora_A:
                a = m.lora_A[adapter].weight.detach().float()
                b = m.lora_B[adapter].weight.detach().float() * m.scaling[adapter]
                out[mname.removeprefix("base_model.model.")] = (b, a)
        return out

    facs = [factors(n) for n in names]
    dims = sum(b.shape[0] + a.shape[1] for b, a in facs[0].values())  # sum of (out + in)
    per_adapter = rank * dims

    def eval_task(ti: int, deltas: dict[str, torch.Tensor] | None, adapter: str | None) -> float:
        model = fresh()
        with torch.no_grad():
            if adapter is not None:
                for mname, m in peft_model.named_modules():
                    if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) and \
                            adapter in m.lora_A:
                        sub = model.get_submodule(mname.removeprefix("base_model.model."))
                        sub.weight.add_(m.get_delta_weight(adapter))
            for mname, dw in (deltas or {}).items():
                model.get_submodule(mname).weight.add_(dw)
        return evaluate(model, cache, *splits[ti].evals["test"])

    def add(label, accs, storage, budget, note=""):
        rows.append({"task": "rmm", "method": label, "accuracy_per_task": accs,
                     "mean_accuracy": sum(accs) / len(accs), "storage": storage,
                     "budget": budget, "note": note})
        print(f"  {label:34s} {[round(a, 3) for a in accs]} mean {sum(accs) / len(accs):.3f}"
              f" storage {storage}", flush=True)

    t_count = len(tasks)
    add("no adapter (shared frozen head)", [eval_task(t, None, None) for t in range(t_count)],
        0, "-", "chance level: the adapters carry the accuracy")
    add("each adapter alone", [eval_task(t, {k: b @ a for k, (b, a) in facs[t].items()}, None)
                               for t in range(t_count)], t_count * per_adapter, "-",
        "upper bound")

    def rmm(k: int, rho: int, budget: str) -> None:
        merged = la.reversible_merge(facs, basis_size=k, basis_rank=rho)
        accs = [eval_task(t, merged.task_delta(t), None) for t in range(t_count)]
        add(f"RMM k={k}, basis rank {rho}", accs, merged.storage, budget,
            "recovery err " + ", ".join(f"{e:.2f}" for e in merged.recovery_error))

    def peft_merge(ctype: str, w: float, budget: str, **kw) -> None:
        tag = f"m_{ctype}_{int(100 * w)}_{kw.get('svd_rank', rank)}"
        torch.manual_seed(0)
        peft_model.add_weighted_adapter(names, [w] * t_count, tag, combination_type=ctype, **kw)
        accs = [eval_task(t, None, tag) for t in range(t_count)]
        stored = sum(p.numel() for n, p in peft_model.named_parameters() if f".{tag}." in n)
        extra = ", density 0.5" if "density" in kw else ""
        add(f"PEFT {ctype} w={w:.2f}", accs, stored, budget, f"one merged adapter{extra}")

    one, all4 = "1 adapter", f"{t_count} adapters"
    for k, rho in ((1, 4), (2, 2), (4, 1)):
        rmm(k, rho, one)
    for w in (1.0, 1.0 / t_count):
        peft_merge("linear", w, one)
        peft_merge("svd", w, one, svd_rank=rank)
        peft_merge("ties", w, one, density=0.5)
        peft_merge("dare_linear", w, one, density=0.5)
    for k, rho in ((1, 16), (2, 8), (4, 4)):
        rmm(k, rho, all4)
    for w in (1.0, 1.0 / t_count):
        peft_merge("cat", w, all4)
        peft_merge("ties_svd", w, all4, svd_rank=t_count * rank, density=0.5)
        peft_merge("dare_linear_svd", w, all4, svd_rank=t_count * rank, density=0.5)
    return rows


# ----------------------------------------------------------------------------- vision
class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def vision_rows(args) -> list[dict]:
    from peft import LoraConfig, get_peft_model
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    test = torch.arange(len(y)) % 4 == 0
    src, tgt = y < 5, y >= 5

    def fit(model, params, tr, te, epochs):
        opt = torch.optim.AdamW([{"params": p, "lr": lr} for p, lr in params if p])
        g = torch.Generator().manual_seed(0)
        xt, yt = x[tr], y[tr] % 5
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(yt), generator=g)
            for i in range(0, len(perm), 64):
                idx = perm[i:i + 64]
                loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        sec = time.perf_counter() - t0
        with torch.no_grad():
            acc = float((model(x[te]).argmax(-1) == y[te] % 5).float().mean())
        return acc, sec

    torch.manual_seed(0)
    base = CNN()
    acc0, _ = fit(base, [(list(base.parameters()), 3e-3)], src & ~test, src & test, 30)
    print(f"  vision base on 0-4: acc {acc0:.4f}", flush=True)
    rows = [{"task": "vision", "method": "base CNN on digits 0-4 (source task)",
             "trainable": sum(p.numel() for p in base.parameters()), "accuracy": acc0,
             "seconds": 0.0, "note": "reference"}]

    def run(label, make, lr):
        torch.manual_seed(0)
        model = copy.deepcopy(base)
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            model.head.reset_parameters()
        trainable = make(model)
        model.head.requires_grad_(True)
        acc, sec = fit(model, [(trainable, lr), (list(model.head.parameters()), 3e-3)],
                       tgt & ~test, tgt & test, args.vision_epochs)
        count = sum(p.numel() for p in trainable)
        rows.append({"task": "vision", "method": label, "trainable": count, "accuracy": acc,
                     "seconds": sec, "note": "digits 5-9"})
        print(f"  {label:28s} params {count:8d}  acc {acc:.4f}  {sec:6.1f}s", flush=True)

    def full(model):
        for p in model.parameters():
            p.requires_grad_(True)
        return [p for n, p in model.named_parameters() if not n.startswith("head")]

    def peft_conv(r):
        def make(model):
            pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=r,
                                                  target_modules=["conv1", "conv2"]))
            return [p for n, p in pm.named_parameters() if p.requires_grad and "lora_" in n]
        return make

    def flora(model):
        la.apply(model, la.FLoRA(rank=4, kernel_rank=2, targets=["conv1", "conv2"]))
        return list(la.trainable_parameters(model).values())

    run("head only", lambda m: [], 0.0)
    run("full fine-tune", full, 1e-3)
    for r in (2, 4):
        run(f"PEFT conv LoRA r={r}", peft_conv(r), 3e-3)
    run("FLoRA r=4 (kernel rank 2)", flora, 3e-3)
    return rows


# ----------------------------------------------------------------------------- main
def table(rows: list[dict], setup: str) -> str:
    lines = [setup, "", "| task | head | method | trainable params | accuracy (%) | seeds | LR "
             "| seconds/run |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["task"] == "text":
            lr = f"{r['lr']:.0e}" if r["lr"] else "-"
            lines.append(f"| text | {r['head']} | {r['method']} | {r['trainable']:,} | "
                         f"{100 * r['accuracy']:.1f} ± {100 * r['std']:.1f} | {r['seeds']} | "
                         f"{lr} | {r['seconds']:.1f} |")
    for r in rows:
        if r["task"] == "vision":
            lines.append(f"| vision | new, trained | {r['method']} | {r['trainable']:,} | "
                         f"{100 * r['accuracy']:.1f} | 1 | - | {r['seconds']:.1f} |")
    lines += ["", "| budget | RMM / merge | per-task accuracy (%) | mean | stored numbers | "
              "note |", "| --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        if r["task"] == "rmm":
            per = " / ".join(f"{100 * a:.1f}" for a in r["accuracy_per_task"])
            lines.append(f"| {r['budget']} | {r['method']} | {per} | "
                         f"{100 * r['mean_accuracy']:.1f} | {r['storage']:,} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--epochs", type=int, default=6, help="text epochs")
    ap.add_argument("--seeds", type=int, default=3,
                    help="seeds for head only, PEFT LoRA r=1/4, NOLA and the largest SVFit")
    ap.add_argument("--extra-seeds", type=int, default=1, help="seeds for the other text rows")
    ap.add_argument("--frozen-seeds", type=int, default=2, help="seeds, frozen-head text rows")
    ap.add_argument("--rmm-epochs", type=int, default=4)
    ap.add_argument("--rmm-lr", type=float, default=3e-3)
    ap.add_argument("--vision-epochs", type=int, default=15)
    ap.add_argument("--nola-basis", type=int, default=128)
    ap.add_argument("--svfit-ranks", type=int, nargs="+", default=[32, 288])
    ap.add_argument("--quick", action="store_true", help="1 seed, 1 epoch: a smoke run")
    ap.add_argument("--out", default=str(RESULTS / "adapters"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.rmm_epochs, args.vision_epochs = 1, 1, 1, 2
    from lowrank.data import other_domain_passages
    from lowrank.models import load_model

    torch.manual_seed(0)
    t0 = time.perf_counter()
    rows: list[dict] = []
    if "vision" in args.parts:
        print("vision: digits 0-4 -> 5-9", flush=True)
        rows += vision_rows(args)
    if {"text", "text-frozen", "rmm"} & set(args.parts):
        lm = load_model(None)
        lm.model.eval()
        tp = topic_passages()
        texts = sorted({p for k in TOPICS for p in tp[k]} | set(other_domain_passages()))
        cache = Cached(lm, texts)
        print(f"cached MiniLM layers 0-{TOP - 1} on {len(cache.h)} windows of {len(texts)} "
              "passages", flush=True)
    if "text" in args.parts:
        print("text: 8-topic classification of 32-token windows", flush=True)
        rows += text_rows(lm, cache, args)
    if "text-frozen" in args.parts:
        print("text, shared frozen random head (adapters carry the accuracy)", flush=True)
        rows += text_rows(lm, cache, args, frozen_head=True)
    if "rmm" in args.parts:
        print("RMM: 4 binary tasks, shared frozen head", flush=True)
        rows += rmm_rows(lm, cache, args)
    setup = (f"Parts {' '.join(args.parts)}. Text: MiniLM layer {TOP} adapted (query, value), "
             f"{SEQ_LEN}-token windows, {args.epochs} epochs of one window per train passage, "
             f"batch {BATCH}, AdamW; head trained (LR {HEAD_LR:g}) or a shared frozen random "
             f"head; 3-point LR grid per method, chosen "
             f"on validation (seed 0), test mean ± std over the stated seeds. RMM: PEFT LoRA "
             f"r=4 per task, shared frozen random head, {args.rmm_epochs} epochs, LR "
             f"{args.rmm_lr:g}. CNN on digits, {args.vision_epochs} epochs. Total "
             f"{time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} thread(s).")
    write_results(args.out, {"rows": rows, "args": vars(args), "setup": setup},
                  table(rows, setup))


if __name__ == "__main__":
    main()
