"""Reversible model merging: exact at k = T, Eckart-Young optimal for k < T, monotone errors,
factored Gram = dense Gram."""

from __future__ import annotations

import pytest
import torch

import lowrank.adapt as la
from lowrank.adapt.rmm import _gram
from lowrank.errors import ConfigError

T, OUT, IN, R = 5, 12, 10, 2


def _adapters(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{name: (torch.randn(OUT, R, generator=g), torch.randn(R, IN, generator=g))
             for name in ("a", "b")} for _ in range(T)]


def _dense(ad):
    return {n: b @ a for n, (b, a) in ad.items()}


def test_exact_when_basis_size_is_t():
    ads = _adapters()
    merged = la.reversible_merge(ads, basis_size=T)
    for t, ad in enumerate(ads):
        for name, d in _dense(ad).items():
            torch.testing.assert_close(merged.task_delta(t)[name], d, rtol=0, atol=1e-4)
    assert max(merged.recovery_error) < 1e-6


def test_error_is_monotone_and_equals_eckart_young():
    ads = _adapters(1)
    prev = [float("inf")] * T
    for k in range(1, T + 1):
        merged = la.reversible_merge(ads, basis_size=k)
        # per task: non-increasing in k (strictly smaller somewhere until exact)
        assert all(e <= p + 1e-9 for e, p in zip(merged.recovery_error, prev, strict=True))
        prev = merged.recovery_error
        for name in ("a", "b"):
            stacked = torch.stack([_dense(ad)[name].reshape(-1).double() for ad in ads], 1)
            s = torch.linalg.svdvals(stacked)
            optimum = (s[k:] ** 2).sum()
            got = sum(((merged.task_delta(t)[name].double() - _dense(ad)[name].double()) ** 2
                       ).sum() for t, ad in enumerate(ads))
            torch.testing.assert_close(got, optimum, rtol=1e-4, atol=1e-6)
            # measured recovery error matches the closed form from the eigenvalues
            lam = merged.eigenvalues[name].double()
            torch.testing.assert_close(lam[k:].sum(), optimum, rtol=1e-4, atol=1e-4)
    first = la.reversible_merge(ads, basis_size=1).recovery_error
    assert all(f > 1e-3 for f in first)


def test_factored_gram_equals_dense_gram():
    ads = _adapters(2)
    factored = _gram([ad["a"] for ad in ads])
    dense = _gram([ad["a"][0].double() @ ad["a"][1].double() for ad in ads])
    torch.testing.assert_close(factored, dense, rtol=1e-10, atol=1e-8)


def test_apply_and_restore_on_a_model(tiny_bert):
    import copy

    model = copy.deepcopy(tiny_bert)
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value"]
    g = torch.Generator().manual_seed(3)
    ads = [{n: (torch.randn(64, 2, generator=g), torch.randn(2, 64, generator=g)) for n in names}
           for _ in range(3)]
    merged = la.reversible_merge(ads, basis_size=3)
    w0 = model.get_submodule(names[0]).weight.detach().clone()
    merged.apply(model, 1)
    b, a = ads[1][names[0]]
    torch.testing.assert_close(model.get_submodule(names[0]).weight, w0 + b @ a, rtol=0,
                               atol=1e-4)
    merged.restore(model)
    assert torch.equal(model.get_submodule(names[0]).weight, w0)
    with pytest.raises(ConfigError, match="basis_size must be an int in"):
        la.reversible_merge(ads, basis_size=4)


@pytest.mark.parametrize("factored", [True, False])
def test_budgeted_basis_rank(factored):
    ads = _adapters(4)
    if not factored:
        ads = [_dense(ad) for ad in ads]
    # rank budget >= T r: the truncation is lossless, same recovery as plain RMM (exact at k=T)
    full = la.reversible_merge(ads, basis_size=T, basis_rank=T * R)
    for t, ad in enumerate(ads):
        dense = ad if not factored else _dense(ad)
        for name, d in dense.items():
            torch.testing.assert_close(full.task_delta(t)[name], d, rtol=0, atol=1e-4)
    plain2 = la.reversible_merge(ads, basis_size=2)
    big2 = la.reversible_merge(ads, basis_size=2, basis_rank=T * R)
    for a, b in zip(plain2.recovery_error, big2.recovery_error, strict=True):
        assert abs(a - b) < 1e-5
    # budgeted: storage k rho (out + in) + k T per layer; reported error = measured error;
    # coefficients are the least-squares fit onto the truncated basis
    k, rho = 2, 3
    m = la.reversible_merge(ads, basis_size=k, basis_rank=rho)
    assert m.storage == 2 * (k * rho * (OUT + IN) + k * T)
    assert not m.basis and set(m.basis_factors) == {"a", "b"}
    err, norm = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    for name in ("a", "b"):
        p, q = m.basis_factors[name]
        basis = torch.einsum("kor,kir->koi", p.double(), q.double()).reshape(k, -1).t()
        assert torch.linalg.matrix_rank(basis[:, 0].reshape(OUT, IN)) <= rho
        for t, ad in enumerate(ads):
            d = (ad if not factored else _dense(ad))[name].double().reshape(-1)
            got = m.task_delta(t)[name].double().reshape(-1)
            best = basis @ torch.linalg.lstsq(basis, d[:, None]).solution[:, 0]
            torch.testing.assert_close(got, best, rtol=1e-4, atol=1e-4)
            err[t] += ((got - d) ** 2).sum()
            norm[t] += (d ** 2).sum()
    torch.testing.assert_close(torch.tensor(m.recovery_error, dtype=torch.float64),
                               (err / norm).sqrt(), rtol=1e-3, atol=1e-5)
    assert min(m.recovery_error) > 1e-3
    with pytest.raises(ConfigError, match="basis_rank must be a positive int"):
        la.reversible_merge(ads, basis_size=1, basis_rank=0)
