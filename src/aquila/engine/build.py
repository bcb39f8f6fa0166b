"""The training model of a run: built on the meta device, laid out, then each rank's shards.

No rank ever holds the whole model: the module is built on meta (nothing allocated), the layout
(FSDP2, HSDP, tensor parallel) is applied to the meta parameters, and only then does each rank
allocate its own shards on the training device and fill them, from the seed
(``aquila.model.init``: the same numbers for every layout and world size) or from existing
weights (``train.init_from``: each rank reads only its boxes of the stored tensors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from aquila.engine.config import TrainConfig
from aquila.engine.distributed import ParallelPlan, parallelize
from aquila.errors import UserError
from aquila.model.transformer import AquilaModel


def build_model(
    cfg: TrainConfig,
    plan: ParallelPlan,
    device: torch.device,
    init_from: Path | None = None,
    initialise: bool = True,
) -> AquilaModel:
    """The run's model with fp32 master weights on ``device``, sharded by ``plan``.

    Weights come from ``init_from`` (a model dir, any weight layout) when given, else from
    ``cfg.train.seed``; ``initialise=False`` leaves them unset for a checkpoint to fill (resume).
    """
    from aquila.model.init import init_weights
    from aquila.model.io import load_weights_into, materialize, open_weights

    model = AquilaModel(cfg.model, device="meta")
    if plan.world > 1:
        parallelize(model, plan, device)
    materialize(model, device)  # each rank allocates its shards, nothing more
    if init_from is not None:
        try:
            load_weights_into(model, open_weights(init_from))
        except UserError as exc:
            raise UserError(f"train.init_from: {exc}") from None
        model.reset_rope()
    elif initialise:
        init_weights(model, cfg.train.seed)
    else:
        model.reset_rope()
    return model.train()
