"""The worked examples in the loss docstrings are checked (they are the documented exact outputs)."""

import doctest

import survival3d.losses.functional as functional


def test_functional_docstring_examples():
    result = doctest.testmod(functional, verbose=False)
    assert result.attempted >= 3 and result.failed == 0
