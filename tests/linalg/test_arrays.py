"""The shared array layer: numpy or torch in, the same type out; mode products by definition."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lowrank.errors import DataError
from lowrank.linalg.arrays import ArrayType, as_numpy, as_torch, kron_matvec, mode_dot


@pytest.mark.parametrize("x, library, dtype", [
    (np.ones(3, dtype=np.float32), "numpy", np.float32),
    (np.ones(3, dtype=np.int64), "numpy", np.float64),
    ([1.0, 2.0], "numpy", np.float64),
    (sp.eye(3, format="csr", dtype=np.float32), "numpy", np.float32),
    (torch.ones(3, dtype=torch.float32), "torch", torch.float32),
    (torch.ones(3, dtype=torch.complex64), "torch", torch.complex64),
    (torch.ones(3, dtype=torch.int32), "torch", torch.float64),
])
def test_restore_gives_back_the_callers_type_and_dtype(x, library, dtype):
    out_type = ArrayType.of(x)
    assert out_type.library == library
    for result in (np.arange(3.0), torch.arange(3.0, dtype=torch.float64)):
        back = out_type.restore(result)
        assert isinstance(back, np.ndarray if library == "numpy" else torch.Tensor)
        assert back.dtype == dtype
        assert np.array_equal(np.asarray(back), [0.0, 1.0, 2.0])


def test_reading_arrays():
    assert as_numpy(torch.tensor([1, 2])).dtype == np.float64
    assert as_numpy(np.array([1j])).dtype == np.complex128          # complex kept for numpy
    assert as_torch(sp.eye(2, format="coo")).equal(torch.eye(2, dtype=torch.float64))
    sparse = torch.eye(2).to_sparse()
    assert as_torch(sparse, dtype=torch.float32).equal(torch.eye(2))
    frozen = np.ones(2)
    frozen.flags.writeable = False
    assert as_torch(frozen).sum() == 2                               # read-only numpy is copied
    with pytest.raises(DataError, match="^A has the complex dtype"):
        as_torch(np.array([1j]), "A")
    with pytest.raises(DataError, match="^A must hold numbers"):
        as_numpy(np.array(["a"]), "A")
    with pytest.raises(DataError, match="^A could not be read"):
        as_numpy([[1.0], [1.0, 2.0]], "A")


def test_mode_dot_and_kron_matvec_by_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5))
    mats = [rng.standard_normal((2, 3)), rng.standard_normal((6, 4)), rng.standard_normal((5, 5))]
    definitions = ["za,abc->zbc", "zb,abc->azc", "zc,abc->abz"]  # x ×_mode m, entrywise
    for mode, (m, eq) in enumerate(zip(mats, definitions, strict=True)):
        want = np.einsum(eq, m, x)
        assert np.allclose(mode_dot(x, m, mode), want)
        as_t = mode_dot(torch.from_numpy(x), m, mode)               # torch when either is
        assert isinstance(as_t, torch.Tensor) and np.allclose(as_t.numpy(), want)
    kron = np.kron(np.kron(mats[0], mats[1]), mats[2])
    assert np.allclose(kron_matvec(mats, x).reshape(-1), kron @ x.reshape(-1))
