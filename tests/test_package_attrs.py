"""`import nvcim` alone gives the README's spelling of the extension points (nvcim.models.register_model, ...)."""

import subprocess
import sys

import pytest

import nvcim


def test_submodules_load_on_attribute_access():
    # a fresh interpreter: in this one, other tests may have imported the submodules already
    code = ("import nvcim\n"
            "assert callable(nvcim.models.register_model)\n"
            "assert callable(nvcim.methods.register_method)\n"
            "assert callable(nvcim.data.register_dataset)\n"
            "assert callable(nvcim.sweep.register_backend)\n"
            "assert callable(nvcim.evaluate.paired_difference)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nvcim.nope  # noqa: B018
    assert not hasattr(nvcim, "nope")
