"""The device runtime: same token ids as transformers, labels out, and never torch or transformers."""

import subprocess
import sys
import textwrap

import numpy as np
from transformers import AutoTokenizer

from nebula.client.runtime.predictor import EdgePredictor


def test_tokenizers_library_gives_the_ids_transformers_gives(fp32_package, adapter_dir, tweets):
    hf = AutoTokenizer.from_pretrained(str(adapter_dir))
    texts = tweets["test"] + ["a " * 200, "", "Ünïcödé ✨ 😀 #hashtag @user http://t.co/x"]
    expected = hf(texts, truncation=True, max_length=64)["input_ids"]
    assert EdgePredictor(fp32_package).encode(texts) == expected


def test_predict_returns_manifest_labels_in_order(fp32_package, merged_logits, tweets):
    predictor = EdgePredictor(fp32_package)
    labels = predictor.predict(tweets["test"])
    assert labels == [("neg", "neu", "pos")[i] for i in merged_logits.argmax(1)]
    probs = predictor.predict_proba(tweets["test"][:3])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert predictor.predict_logits([]).shape == (0, 3)


def test_runtime_never_imports_torch_or_transformers(int8_package):
    code = textwrap.dedent(f"""
        import sys
        import nebula.client.runtime.predictor
        predictor = nebula.client.runtime.predictor.EdgePredictor({str(int8_package)!r})
        print(predictor.predict(["what a lovely day", "this is awful"]))
        heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
