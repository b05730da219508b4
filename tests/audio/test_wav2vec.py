import importlib.util

import pytest

from liveavatar_rt.audio import Wav2VecFeatures


@pytest.mark.skipif(importlib.util.find_spec("transformers") is not None, reason="transformers is installed")
def test_missing_transformers_names_the_package(tmp_path):
    with pytest.raises(ImportError, match="pip install transformers"):
        Wav2VecFeatures(tmp_path)
