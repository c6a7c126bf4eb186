"""GaLoreAdamW against mathematical oracles (AdamW identity, P P^T G, resume, state sizes)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from lowrank.errors import ConfigError, LowRankError
from lowrank.optim import GaLoreAdamW, estimate_memory, galore_groups
from lowrank.optim import projectors as pj


def _mlp(dtype=torch.float32, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 8), nn.Tanh(),
                         nn.Linear(8, 8)).to(dtype)


def _batches(n, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 12, generator=g, dtype=dtype),
             torch.randn(16, 8, generator=g, dtype=dtype)) for _ in range(n)]


def _train(model, opt, batches):
    for x, y in batches:
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _groups(model, **kw):
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    ids = {id(p) for p in weights}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": weights, **kw}]


def test_group_without_rank_is_bit_identical_to_torch_adamw():
    a, b = _mlp(), _mlp()
    ref = torch.optim.AdamW(a.parameters(), lr=3e-2, weight_decay=0.1, foreach=False)
    ours = GaLoreAdamW(b.parameters(), lr=3e-2, weight_decay=0.1)
    batches = _batches(6)
    _train(a, ref, batches)
    _train(b, ours, batches)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("shape", [(10, 6), (6, 10), (7, 7)])
@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "left", "right"])
def test_svd_projected_sgd_update_equals_PPt_G(shape, proj_type):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(*shape, dtype=torch.float64))
    g = torch.randn(*shape, dtype=torch.float64)
    w0 = w.detach().clone()
    r, lr, scale = 3, 0.1, 0.5
    opt = GaLoreAdamW([{"params": [w], "rank": r, "update_proj_gap": 10, "scale": scale,
                        "proj_type": proj_type, "inner": "sgd"}], lr=lr, weight_decay=0.0)
    w.grad = g.clone()
    opt.step()
    side = opt.state[w]["side"]
    u, s, vh = torch.linalg.svd(g)
    if side == pj.LEFT:
        P = u[:, :r]
        expected = P @ P.T @ g
        assert opt.basis_of(w).shape == (shape[0], r)
    else:
        Q = vh[:r].T
        expected = g @ Q @ Q.T
        assert opt.basis_of(w).shape == (shape[1], r)
    torch.testing.assert_close(w.detach(), w0 - lr * scale * expected, atol=1e-12, rtol=0)
    # Eckart-Young: the discarded energy is the tail of the spectrum
    assert torch.isclose((g - expected).pow(2).sum(), s[r:].pow(2).sum(), atol=1e-10)


def test_full_rank_projected_sgd_equals_sgd():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(6, 9, dtype=torch.float64))
    v = nn.Parameter(w.detach().clone())
    ours = GaLoreAdamW([{"params": [w], "rank": 6, "update_proj_gap": 2, "scale": 1.0,
                         "inner": "sgd"}], lr=0.05, weight_decay=0.0)
    sgd = torch.optim.SGD([v], lr=0.05)
    for _ in range(5):
        g = torch.randn(6, 9, dtype=torch.float64)
        w.grad, v.grad = g.clone(), g.clone()
        ours.step()
        sgd.step()
    torch.testing.assert_close(w.detach(), v.detach(), atol=1e-12, rtol=0)


def test_frozen_full_basis_equals_adamw_in_rotated_coordinates():
    """With T = infinity the trajectory of W Q equals AdamW on W~ = W Q (right projection)."""
    torch.manual_seed(0)
    m, n = 9, 5
    w = nn.Parameter(torch.randn(m, n, dtype=torch.float64))
    grads = [torch.randn(m, n, dtype=torch.float64) for _ in range(4)]
    opt = GaLoreAdamW([{"params": [w], "rank": n, "update_proj_gap": 10**6, "scale": 1.0,
                        "stagger": False}], lr=0.01, weight_decay=0.0)
    w.grad = grads[0].clone()
    opt.step()
    Q = opt.basis_of(w).clone()
    wt = nn.Parameter((w.detach() @ Q).clone())
    # replay: AdamW on W~ from the same start, fed G Q
    w0 = w.detach().clone()
    wt0 = nn.Parameter(torch.zeros(m, n, dtype=torch.float64))
    with torch.no_grad():
        wt0.copy_((w0 + 0.0) @ Q)
    del wt
    ref = torch.optim.AdamW([wt0], lr=0.01, weight_decay=0.0, foreach=False)
    # restart ours from scratch to compare the full trajectory
    w2 = nn.Parameter(w0.clone())
    with torch.no_grad():  # undo the first step for the reference start
        pass
    opt2 = GaLoreAdamW([{"params": [w2], "rank": n, "update_proj_gap": 10**6, "scale": 1.0,
                         "stagger": False}], lr=0.01, weight_decay=0.0)
    opt2.state[w2].update({"step": 0, "side": pj.RIGHT, "rank": n, "refresh_offset": 0,
                           "refreshes": 1, "basis": Q.clone()})
    for g in grads:
        w2.grad = g.clone()
        opt2.step()
        wt0.grad = g @ Q
        ref.step()
    torch.testing.assert_close(w2.detach() @ Q, wt0.detach(), atol=1e-12, rtol=0)


def test_dct_matrix_is_orthonormal_and_indices_select_best_columns():
    for s in (7, 64):
        d = pj.dct_matrix(s, torch.float64)
        torch.testing.assert_close(d.T @ d, torch.eye(s, dtype=torch.float64), atol=1e-12,
                                   rtol=0)
    torch.manual_seed(0)
    g = torch.randn(9, 6, dtype=torch.float64)
    d = pj.dct_matrix(6, torch.float64)
    idx = pj.dct_indices(g, pj.RIGHT, 2)
    assert idx.dtype == torch.int32
    norms = (g @ d).norm(dim=0)
    assert set(idx.tolist()) == set(torch.topk(norms, 2).indices.tolist())
    # exhaustive: the chosen subset minimises the projection error over all 15 subsets
    errs = {}
    for sub in itertools.combinations(range(6), 2):
        q = d[:, list(sub)]
        errs[sub] = (g - g @ q @ q.T).pow(2).sum().item()
    best = min(errs, key=errs.get)
    assert set(best) == set(idx.tolist())
    # left side scores rows of D^T G
    gl = torch.randn(5, 11, dtype=torch.float64)
    idl = pj.dct_indices(gl, pj.LEFT, 2)
    rows = (pj.dct_matrix(5, torch.float64).T @ gl).norm(dim=1)
    assert set(idl.tolist()) == set(torch.topk(rows, 2).indices.tolist())


def test_dct_with_svd_basis_reproduces_galore_projection():
    torch.manual_seed(0)
    g = torch.randn(8, 5, dtype=torch.float64)
    _, _, vh = torch.linalg.svd(g, full_matrices=False)
    v = vh.T
    scores = (g @ v).norm(dim=0)
    top = torch.topk(scores, 2).indices
    torch.testing.assert_close((g @ v[:, top]).abs().sort(dim=1).values,
                               (g @ vh[:2].T).abs().sort(dim=1).values)


@pytest.mark.parametrize("basis", ["svd", "rsvd", "dct"])
@pytest.mark.parametrize("proj_type,expect", [("std", "max"), ("reverse_std", "min")])
def test_state_sizes(basis, proj_type, expect):
    m, n, r = 20, 12, 4
    w = nn.Parameter(torch.randn(m, n))
    opt = GaLoreAdamW([{"params": [w], "rank": r, "basis": basis, "proj_type": proj_type}])
    w.grad = torch.randn(m, n)
    opt.step()
    st = opt.state[w]
    other = max(m, n) if expect == "max" else min(m, n)
    assert st["exp_avg"].numel() == st["exp_avg_sq"].numel() == r * other
    if basis == "dct":
        assert "basis" not in st and st["dct_idx"].dtype == torch.int32
        assert st["dct_idx"].numel() == r
    else:
        assert st["basis"].numel() == r * (m + n - other)


def test_refresh_schedule_plain_and_staggered(monkeypatch):
    calls: list[tuple[int, int]] = []
    orig = pj.svd_basis
    step_box = [0]

    def spy(grad, side, rank):
        calls.append((step_box[0], grad.shape[0]))
        return orig(grad, side, rank)

    monkeypatch.setattr(pj, "svd_basis", spy)
    ws = [nn.Parameter(torch.randn(6 + i, 5)) for i in range(4)]
    opt = GaLoreAdamW([{"params": ws, "rank": 2, "update_proj_gap": 4, "stagger": False}])
    for t in range(9):
        step_box[0] = t
        for w in ws:
            w.grad = torch.randn_like(w)
        opt.step()
    assert sorted({c[0] for c in calls}) == [0, 4, 8]
    assert len(calls) == 12
    calls.clear()
    opt = GaLoreAdamW([{"params": ws, "rank": 2, "update_proj_gap": 4, "stagger": True}])
    per_step: dict[int, int] = {}
    for t in range(9):
        step_box[0] = t
        for w in ws:
            w.grad = torch.randn_like(w)
        opt.step()
    for t, _ in calls:
        per_step[t] = per_step.get(t, 0) + 1
    assert per_step[0] == 4  # every parameter needs a first basis
    assert all(v == 1 for t, v in per_step.items() if t > 0)  # later refreshes spread out
    assert sum(per_step.values()) == 4 + 8  # each parameter still refreshes every 4 steps


@pytest.mark.parametrize("proj_type", ["std", "full"])
@pytest.mark.parametrize("basis", ["svd", "rsvd", "dct"])
def test_resume_from_weights_only_file_is_bit_exact(tmp_path, basis, proj_type):
    batches = _batches(6)
    kw = {"rank": 3, "update_proj_gap": 2, "basis": basis, "proj_type": proj_type}
    a = _mlp()
    opt_a = GaLoreAdamW(_groups(a, **kw), lr=1e-2)
    _train(a, opt_a, batches)

    b = _mlp()
    opt_b = GaLoreAdamW(_groups(b, **kw), lr=1e-2)
    _train(b, opt_b, batches[:3])
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, tmp_path / "ck.pt")
    blob = torch.load(tmp_path / "ck.pt", weights_only=True)
    c = _mlp(seed=5)
    c.load_state_dict(blob["model"])
    opt_c = GaLoreAdamW(_groups(c, **kw), lr=1e-2)
    opt_c.load_state_dict(blob["opt"])
    if basis == "dct":
        assert opt_c.state[c[0].weight]["dct_idx"].dtype == torch.int32
        if proj_type == "full":
            assert opt_c.state[c[0].weight]["dct_idx_right"].dtype == torch.int32
    _train(c, opt_c, batches[3:])
    for p, q in zip(a.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q)


def test_per_layer_mode_matches_step_and_refuses_accumulation():
    batches = _batches(4)
    a, b = _mlp(), _mlp()
    opt_a = GaLoreAdamW(_groups(a, rank=3, update_proj_gap=2), lr=1e-2)
    _train(a, opt_a, batches)
    opt_b = GaLoreAdamW(_groups(b, rank=3, update_proj_gap=2), lr=1e-2)
    handles = opt_b.enable_per_layer(b)
    for x, y in batches:
        (b(x) - y).pow(2).mean().backward()
        assert all(p.grad is None for p in b.parameters())  # consumed inside backward
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-7, rtol=0)
    for h in handles:
        h.remove()
    with pytest.raises(LowRankError, match="accumulation"):
        opt_b.enable_per_layer(b, accumulation_steps=4)


def test_projected_group_rejects_flattened_parameters():
    with pytest.raises(LowRankError, match="DeepSpeed ZeRO or FSDP1"):
        GaLoreAdamW([{"params": [nn.Parameter(torch.randn(30))], "rank": 2}])


def test_galore_groups_on_llama_and_memory_formula(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    groups = galore_groups(model, rank=8)
    projected = groups[1]["params"]
    assert len(projected) == 7 * model.config.num_hidden_layers
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    est = estimate_memory(model, "galore", rank=8)
    expected_state = expected_proj = 0
    for p in projected:
        m, n = p.shape
        expected_state += 2 * 8 * max(m, n) * 4
        expected_proj += 8 * min(m, n) * 4
    ids = {id(p) for p in projected}
    expected_state += sum(2 * p.numel() * 4 for p in model.parameters() if id(p) not in ids)
    assert est.optimizer_state == expected_state
    assert est.projector == expected_proj
    dense = estimate_memory(model, "adamw")
    assert dense.optimizer_state == 2 * sum(p.numel() * 4 for p in model.parameters())
    assert est.projected_state / est.dense_state_of_projected < 0.4
    opt = GaLoreAdamW(groups, lr=1e-3)
    assert estimate_memory(model, opt).optimizer_state == est.optimizer_state
    assert "optimizer state" in str(est)


def test_rsvd_recovers_planted_subspace():
    torch.manual_seed(0)
    u = torch.linalg.qr(torch.randn(40, 4))[0]
    v = torch.linalg.qr(torch.randn(25, 4))[0]
    g = u @ torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0])) @ v.T
    q = pj.rsvd_basis(g, pj.RIGHT, 4, seed=3)
    torch.testing.assert_close(q @ q.T, v @ v.T, atol=1e-5, rtol=0)
    p = pj.rsvd_basis(g, pj.LEFT, 4, seed=3)
    torch.testing.assert_close(p @ p.T, u @ u.T, atol=1e-5, rtol=0)
    assert torch.equal(q, pj.rsvd_basis(g, pj.RIGHT, 4, seed=3))  # seeded: reproducible


@pytest.mark.parametrize("shape", [(10, 6), (6, 10)])
def test_full_projection_update_equals_PPt_G_QQt(shape):
    """proj_type="full" (galore-torch's two-sided projection): update P P^T G Q Q^T."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(*shape, dtype=torch.float64))
    g = torch.randn(*shape, dtype=torch.float64)
    w0 = w.detach().clone()
    r, lr, scale = 3, 0.1, 0.5
    opt = GaLoreAdamW([{"params": [w], "rank": r, "update_proj_gap": 10, "scale": scale,
                        "proj_type": "full", "inner": "sgd"}], lr=lr, weight_decay=0.0)
    w.grad = g.clone()
    opt.step()
    u, s, vh = torch.linalg.svd(g)
    P, Q = u[:, :r], vh[:r].T
    expected = P @ P.T @ g @ Q @ Q.T
    torch.testing.assert_close(w.detach(), w0 - lr * scale * expected, atol=1e-12, rtol=0)
    # for the top singular pair both projections keep the same rank-r part: G_r
    torch.testing.assert_close(expected, u[:, :r] @ torch.diag(s[:r]) @ vh[:r], atol=1e-12,
                               rtol=0)


@pytest.mark.parametrize("basis", ["svd", "rsvd", "dct"])
def test_full_projection_state_sizes_and_memory_estimate(basis):
    m, n, r = 20, 12, 4
    w = nn.Parameter(torch.randn(m, n))
    opt = GaLoreAdamW([{"params": [w], "rank": r, "basis": basis, "proj_type": "full"}])
    w.grad = torch.randn(m, n)
    opt.step()
    st = opt.state[w]
    assert st["exp_avg"].shape == st["exp_avg_sq"].shape == (r, r)
    if basis == "dct":
        assert st["dct_idx"].numel() == st["dct_idx_right"].numel() == r
        assert "basis" not in st
    else:
        assert st["basis"].shape == (m, r) and st["basis_right"].shape == (n, r)
    est = estimate_memory(nn.Linear(n, m, bias=False), opt)
    assert est.projected_state == 2 * r * r * 4


def test_rsvd_full_recovers_both_planted_subspaces():
    torch.manual_seed(0)
    u = torch.linalg.qr(torch.randn(40, 4))[0]
    v = torch.linalg.qr(torch.randn(25, 4))[0]
    g = u @ torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0])) @ v.T
    p, q = pj.rsvd_basis(g, pj.BOTH, 4, seed=3)
    torch.testing.assert_close(p @ p.T, u @ u.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(q @ q.T, v @ v.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw, message", [
    ({"lr": float("nan")}, r"^lr must be a finite number in \[0, inf\), got nan"),
    ({"lr": float("inf")}, r"^lr must be a finite number in \[0, inf\), got inf"),
    ({"eps": float("nan")}, r"^eps must be a finite number"),
    ({"weight_decay": -0.1}, r"^weight_decay must be a finite number in \[0, inf\)"),
    ({"betas": (float("nan"), 0.999)}, r"^betas\[0\] must be a finite number in \[0, 1\)"),
    ({"betas": (0.9,)}, r"^betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
])
def test_hyper_parameters_must_be_finite(kw, message):
    # before: lr, eps, weight_decay = nan/inf were accepted (and every step wrote NaN)
    with pytest.raises(ConfigError, match=message):
        GaLoreAdamW(_mlp().parameters(), **kw)


@pytest.mark.parametrize("kw, message", [
    ({"lr": float("nan")}, r"^lr of param group 1 must be a finite number"),
    ({"betas": (0.9, float("inf"))}, r"^betas\[1\] of param group 1 must be a finite number"),
    ({"rank": 2, "scale": float("nan")}, r"^scale of param group 1 must be a finite number in "
                                         r"\(0, inf\)"),
    ({"rank": 2, "rsvd_oversample": -1}, "^rsvd_oversample of param group 1 must be a non-neg"),
    ({"rank": 2, "rsvd_power_iters": 1.5}, "^rsvd_power_iters of param group 1 must be"),
    ({"rank": 2, "seed": float("nan")}, "^seed of param group 1 must be a non-negative int"),
    ({"rank": 2, "stagger": "yes"}, "^stagger of param group 1 must be True or False"),
    ({"rank": True}, "^rank of param group 1 must be a positive int, got True"),
])
def test_group_hyper_parameters_must_be_finite(kw, message):
    with pytest.raises(ConfigError, match=message):
        GaLoreAdamW(_groups(_mlp(), **kw), lr=1e-2)
    with pytest.raises(ConfigError, match=r"^rank must be a positive int, got 2.5"):
        galore_groups(_mlp(), targets=["0", "2"], rank=2.5)  # before: int(2.5) = 2 silently


@pytest.mark.parametrize("key, saved, configured", [
    ("rank", 3, 5), ("basis", "dct", "svd"), ("proj_type", "full", "std"),
    ("update_proj_gap", 2, 4), ("rank", None, 3),
])
def test_load_refuses_a_state_with_other_projection_settings(key, saved, configured):
    # before: torch's load_state_dict replaced the configured value by the saved one
    def kw(value):  # None: a plain AdamW group
        return {} if value is None else {"rank": 3, "update_proj_gap": 2, key: value}

    a, b = _mlp(), _mlp()
    opt_a = GaLoreAdamW(_groups(a, **kw(saved)), lr=1e-2)
    _train(a, opt_a, _batches(3))
    opt_b = GaLoreAdamW(_groups(b, **kw(configured)), lr=1e-2)
    message = (rf"^param group 1: the saved optimizer state has {key}={saved!r} but this "
               rf"optimizer is configured with {key}={configured!r}")
    with pytest.raises(ConfigError, match=message):
        opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.param_groups[1].get(key) == configured and not opt_b.state


def test_load_keeps_torch_semantics_for_other_hyper_parameters():
    a, b = _mlp(), _mlp()
    opt_a = GaLoreAdamW(_groups(a, rank=3, update_proj_gap=2), lr=1e-2)
    _train(a, opt_a, _batches(2))
    opt_b = GaLoreAdamW(_groups(b, rank=3, update_proj_gap=2), lr=5e-3)
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.param_groups[1]["lr"] == 1e-2  # restored, as torch.optim does (schedulers)
