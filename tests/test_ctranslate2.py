import numpy as np
import pytest

from audiokv.models.ctranslate2 import CT2Model, read_model_bin, write_model_bin


def test_round_trip_keeps_names_shapes_dtypes_and_values(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "decoder/embeddings/weight": rng.standard_normal((7, 4)).astype(np.float16),
        "decoder/num_heads": np.array(6, dtype=np.int16),
        "encoder/conv1/weight": rng.standard_normal((4, 3, 3)).astype(np.float32),
        "encoder/flag": np.array(1, dtype=np.int8),
        "encoder/ids": np.arange(5, dtype=np.int32),
        "naïve/unicode": rng.standard_normal(3).astype(np.float32),
    }
    model = CT2Model("WhisperSpec", 3, variables, {"decoder/projection/weight": "decoder/embeddings/weight"})
    write_model_bin(model, tmp_path / "model.bin")
    back = read_model_bin(tmp_path / "model.bin")
    assert (back.spec, back.revision, back.aliases) == ("WhisperSpec", 3, model.aliases)
    assert list(back.variables) == list(variables)
    for name, array in variables.items():
        assert back.variables[name].dtype == array.dtype and back.variables[name].shape == array.shape
        np.testing.assert_array_equal(back.variables[name], array)
    np.testing.assert_array_equal(back.get("decoder/projection/weight"), variables["decoder/embeddings/weight"])


def test_truncated_file_is_a_clear_error(tmp_path):
    model = CT2Model("WhisperSpec", 3, {"w": np.ones((10, 10), np.float32)})
    write_model_bin(model, tmp_path / "model.bin")
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-300])
    with pytest.raises(ValueError, match="ends"):
        read_model_bin(tmp_path / "cut.bin")
