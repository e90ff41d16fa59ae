"""The tiny checkpoint builders of tests/tiny_families.py round-trip: build, reload from disk, run one forward.

Per family: the directory reloads with ``AutoModelForImageTextToText`` and with ``AutoProcessor`` (or, where
``AutoProcessor`` needs torchvision, fails saying so and loads through ``tiny_families.load_processor``), the image
processor is the PIL one, and one image in a short conversation gives finite logits over the tokenizer's vocabulary
with the image's tokens present in the input.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_families import FAMILIES, NEEDS_TORCHVISION, build_tiny, load_processor  # noqa: E402

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None

CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
]


@pytest.mark.parametrize("family", FAMILIES)
def test_builder_round_trips(family, tmp_path):
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(1)
    path = build_tiny(family, tmp_path / family)
    assert (path / "config.json").is_file() and (path / "chat_template.jinja").is_file()
    assert AutoConfig.from_pretrained(path, local_files_only=True).model_type == family

    saved_class = json.loads((path / "processor_config.json").read_text(encoding="utf-8"))["processor_class"]
    if family in NEEDS_TORCHVISION and not HAS_TORCHVISION:
        with pytest.raises(ImportError, match="[Tt]orchvision"):
            AutoProcessor.from_pretrained(path, local_files_only=True)
    else:
        assert type(AutoProcessor.from_pretrained(path, local_files_only=True)).__name__ == saved_class
    processor = load_processor(path)
    if not HAS_TORCHVISION:
        assert type(processor.image_processor).__name__.endswith("Pil")

    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    assert model.config.model_type == family
    text = processor.apply_chat_template(CONVERSATION, tokenize=False)
    tok = processor.tokenizer
    # Templates that write BOS themselves get no second one from the tokenizer.
    writes_bos = bool(tok.bos_token) and text.startswith(tok.bos_token)
    inputs = processor(text=[text], images=[[Image.new("RGB", (64, 48), "red")]], return_tensors="pt",
                       add_special_tokens=not writes_bos)
    image_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    assert int((inputs["input_ids"] == image_id).sum()) > 0
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if torch.is_tensor(v)}).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert logits.shape[-1] >= len(tok)
    assert torch.isfinite(logits).all()
