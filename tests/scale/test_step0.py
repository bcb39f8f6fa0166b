"""Step-0 loss of a grown model on held-out real text: FPI keeps it, AKI nearly, random loses it.

The small model is trained briefly here with a bare AdamW loop (the training engine is not the
subject); the slow variant trains longer and prints the table quoted in docs/scale.md.
"""

from __future__ import annotations

import pytest
import torch

from aquila.model import get_preset
from aquila.model.transformer import AquilaModel
from aquila.scale import grow, upcycle


def _train(tokenizer, text: str, steps: int, layers: int = 2):
    torch.manual_seed(0)
    ids = torch.tensor(tokenizer.encode(text))
    cfg = get_preset("aquila-test", n_heads=8, n_kv_heads=2, n_layers=layers, ffn_size=176)
    model = AquilaModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(steps):
        start = torch.randint(0, len(ids) - 65, (16,))
        batch = torch.stack([ids[s : s + 65] for s in start])
        model.token_losses(batch[:, :-1], batch[:, 1:]).mean().backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _table(small, text_tokens, loss_of) -> dict[str, float]:
    cfg = small.cfg
    target = cfg.replace(hidden_size=80, n_heads=10, ffn_size=220, n_layers=cfg.n_layers + 1)
    rows = {"small": loss_of(small, text_tokens)}
    for method in ("fpi", "aki", "aki-pro"):
        for norm in ("tile", "rescale"):
            for ident in (True, False):
                g = grow(small, target, method, identity_new_layers=ident, norm_mode=norm)
                rows[f"{method} {norm} identity={ident}"] = loss_of(g, text_tokens)
    rows["random"] = loss_of(grow(small, target, "random"), text_tokens)
    rows["upcycle 8x top-2"] = loss_of(upcycle(small, 8, 2), text_tokens)
    return rows


def test_step0_losses_after_growth(tiny_tokenizer, english_text, text_tokens, loss_of):
    small = _train(tiny_tokenizer, english_text[:100_000], steps=40)
    rows = _table(small, text_tokens, loss_of)
    assert rows["small"] < rows["random"] - 0.5  # the small model learned something
    for key in ("fpi tile identity=True", "fpi rescale identity=True", "upcycle 8x top-2"):
        assert abs(rows[key] - rows["small"]) < 1e-4, key
    for key, value in rows.items():
        if key.startswith(("aki", "fpi")):
            # Knowledge kept: much closer to the small model than to a random start.
            assert value - rows["small"] < 0.25 * (rows["random"] - rows["small"]), key


@pytest.mark.slow
def test_step0_table_longer_training(
    tiny_tokenizer, english_text, chinese_text, text_tokens, loss_of
):
    small = _train(tiny_tokenizer, english_text[:150_000] + chinese_text[:30_000], 400, layers=4)
    rows = _table(small, text_tokens, loss_of)
    for key, value in rows.items():
        print(f"{key:32s} {value:.4f}")
    assert abs(rows["fpi tile identity=True"] - rows["small"]) < 1e-4
    assert rows["aki-pro tile identity=False"] < rows["random"]
