"""An lm-evaluation-harness model backed by an aquila model dir (optional dependency ``lm_eval``).

    import lm_eval
    from aquila.eval.lm_eval_adapter import AquilaLM

    lm = AquilaLM(path="runs/run-20260101-120000")
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])

or from the shell, with every option of lm_eval's own command line::

    aquila-lm-eval --model aquila --model_args path=RUN_DIR --tasks hellaswag

lm_eval (0.4.x) finds models only in its own table (``lm_eval.models.MODEL_MAPPING``) or among
classes already registered in the process: it has no plugin discovery. So ``aquila-lm-eval``
(also ``python -m aquila.eval.lm_eval_cli``) is lm_eval's CLI in a process where this module
has registered ``aquila``. The three request types map onto :class:`ModelLM`.
"""

from __future__ import annotations

from typing import Any

try:
    # lm_eval's own table first: its get_model() loads it only while the registry is empty, so
    # registering "aquila" before it would hide every built-in model (hf, dummy, ...).
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # pragma: no cover - exercised only without lm_eval
    raise ImportError("the lm-eval adapter needs lm_eval: pip install lm_eval") from exc

from aquila.eval.lm import ModelLM


@register_model("aquila")
class AquilaLM(LM):
    """lm_eval's LM interface: loglikelihood, loglikelihood_rolling and generate_until."""

    def __init__(
        self,
        path: str | None = None,
        batch_size: int | str = 8,
        lm: ModelLM | None = None,
        **_: Any,
    ):
        super().__init__()
        if lm is None:
            if path is None:
                raise ValueError("AquilaLM needs path=MODEL_OR_RUN_DIR")
            from aquila.eval.runner import load_lm

            # lm_eval's CLI passes --batch_size as a string, possibly "auto" (not supported:
            # the default is used).
            size = int(batch_size) if str(batch_size).isdigit() else 8
            lm = load_lm(path, size).lm
        self.lm = lm

    @property
    def tokenizer_name(self) -> str:
        h = self.lm.tokenizer.hash
        return f"aquila-{h() if callable(h) else h}"

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results = self.lm.loglikelihood([tuple(r.args[:2]) for r in requests])
        return [(r.logprob, r.greedy) for r in results]

    def loglikelihood_rolling(self, requests) -> list[float]:
        return self.lm.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests) -> list[str]:
        out = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1]) if len(r.args) > 1 else {}
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            out.append(self.lm.generate_until(context, until, max_new))
        return out
