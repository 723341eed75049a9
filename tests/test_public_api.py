"""Every name fitplan advertises resolves."""
import fitplan


def test_all_public_names_resolve():
    for name in fitplan.__all__:
        assert getattr(fitplan, name) is not None, name


def test_unknown_attribute_is_attribute_error():
    import pytest

    with pytest.raises(AttributeError):
        fitplan.no_such_name  # noqa: B018
