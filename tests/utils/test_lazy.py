"""Lazy module attributes: imported on first access, unknown names and missing extras refused."""

import pytest

from lowrank.utils.lazy import lazy_attributes


def test_lazy_attributes_import_on_access():
    getattr_ = lazy_attributes("lowrank", {"checks": ".utils.checks",
                                           "check_int": ".utils.checks:check_int",
                                           "missing": ".no_such_module"},
                               requires="an extra (pip install extra)")
    from lowrank.utils import checks

    assert getattr_("checks") is checks and getattr_("check_int") is checks.check_int
    with pytest.raises(AttributeError, match="module 'lowrank' has no attribute 'other'"):
        getattr_("other")
    with pytest.raises(ImportError, match=r"^lowrank.missing needs an extra \(pip install"):
        getattr_("missing")
    with pytest.raises(ModuleNotFoundError):
        lazy_attributes("lowrank", {"missing": ".no_such_module"})("missing")
