"""The training loop: short on purpose; everything that watches or steers it is a callback."""

from __future__ import annotations

import contextlib
import functools
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aquila.checks import refuse
from aquila.engine.callbacks import Callback
from aquila.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temps,
    save_checkpoint,
    save_failure,
)
from aquila.engine.config import TrainConfig
from aquila.engine.device import autocast_dtype, peak_flops, peak_memory_bytes
from aquila.engine.distributed import DistInfo
from aquila.engine.history import Event
from aquila.engine.levers import apply_fp8, check_device_levers, checkpoint_kwargs, sdpa_context
from aquila.engine.optim import BatchRamp, LRSchedule, build_optimizer, set_lr
from aquila.engine.step import StepMetrics
from aquila.errors import SaveFailed, UserError
from aquila.model.transformer import AquilaModel, flops_per_token

if TYPE_CHECKING:
    from aquila.data.stream import TrainData
    from aquila.engine.async_checkpoint import PendingCheckpoint


@dataclass
class TrainState:
    step: int = 0
    # Global index of the next sample: the whole data position of the run.
    samples: int = 0
    tokens: int = 0
    train_seconds: float = 0.0


def _is_compile_error(exc: BaseException) -> bool:
    """An error raised by dynamo, AOT autograd or a compiler backend (not by the model)."""
    from torch._dynamo.exc import BackendCompilerFailed, TorchDynamoException

    if isinstance(exc, (BackendCompilerFailed, TorchDynamoException)):
        return True
    try:
        from torch._inductor.exc import InductorError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, InductorError)


def _first_line(exc: BaseException) -> str:
    """The compiler's own error, in one line: a backend's failure is wrapped by dynamo."""
    inner = getattr(exc, "inner_exception", None) or exc
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[0] if lines else ''}"[:300]


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        model: AquilaModel,
        data: TrainData,
        run_dir: Path,
        callbacks: list[Callback] | None = None,
        device: torch.device | None = None,
        dist: DistInfo | None = None,
    ):
        """``data``: the run's stream; the step itself only calls ``read(global_indices)`` and
        ``source_names`` (a benchmark's synthetic tokens provide just those)."""
        self.cfg = cfg
        self.device = device or torch.device("cpu")
        self.dist = dist or DistInfo()
        self.model = model
        self.train_model: torch.nn.Module = model
        self.data = data
        self.run_dir = run_dir
        self.callbacks = list(callbacks or [])
        t = cfg.train
        if t.batch_size % self.dist.dp_world:
            raise ValueError(
                f"train.batch_size {t.batch_size} must divide by the data-parallel size "
                f"{self.dist.dp_world} (world {self.dist.world} / tp {self.dist.tp})"
            )
        self.ramp = BatchRamp(t.batch_size, t.ramp_start, t.ramp_increment, t.ramp_steps)
        self.optimizer = build_optimizer(model, cfg.optim)
        self.schedule = LRSchedule.from_config(cfg.optim, t.max_steps)
        self.state = TrainState()
        self.history: list[dict[str, Any]] = []  # applied commands, checkpointed with the run
        self.amp_dtype = autocast_dtype(self.device, t.dtype)
        if t.loss == "liger" and self.device.type != "cuda":
            raise refuse("train.loss", t.loss, "needs a CUDA device; 'chunked' is the same on CPU")
        # The loss function the step calls: the model's own, or its compiled form.
        self.loss_fn = self._eager_loss_fn()
        self.peak = peak_flops(self.device)
        self.flops_per_token = flops_per_token(model.cfg, cfg.data.seq_len)
        self._stop_reason: str | None = None
        self._stop_checkpoint = False
        self._stop_anomaly = False
        self._checkpoint_requested = False
        self._skip_reason: str | None = None
        self._extra_state: dict[str, Any] = {}
        self._pending_extra: dict[str, Any] = {}
        # The training state of the checkpoint ``on_checkpoint`` reports: this step's for a
        # synchronous save, an earlier one when a background write completes later.
        self.checkpoint_state = TrainState()
        self._pending_save: PendingCheckpoint | None = None
        self._checkpoint_group = None  # gloo group for background DCP writes
        # What torch.compile covers: "none", "model" (blocks, head and loss in one graph) or
        # "blocks" (each block its own graph); "eager-fallback" after a failed compile.
        self.compiled = "none"
        self._compile_checked = not t.compile
        check_device_levers(t, self.device)
        self._sdpa = functools.partial(sdpa_context, t.sdpa_backend)
        if t.fp8:
            if self.dist.world > 1:
                raise refuse("train.fp8", True, "is planned for one process so far")
            apply_fp8(model)  # before compile: the Float8 linears are traced with the rest
        if t.compile:
            self._compile()
        if t.activation_checkpointing:
            self._wrap_activation_checkpointing()

    # -- public controls (used by callbacks) -------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def request_stop(self, reason: str, checkpoint: bool = True, anomaly: bool = False) -> None:
        """End the run at the next boundary. ``anomaly``: the run stops because something went
        wrong with it (the monitor's stop policy), which its exit code tells."""
        self._stop_reason = reason
        self._stop_checkpoint = checkpoint
        self._stop_anomaly = anomaly

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    @property
    def stopped_by_anomaly(self) -> bool:
        return self._stop_reason is not None and self._stop_anomaly

    def skip_update(self, reason: str) -> None:
        """Drop this step's gradients: the batch counts as consumed but changes no weight."""
        self._skip_reason = reason

    def request_checkpoint(self) -> None:
        """Checkpoint at this boundary (asked in ``before_step``) or right after this step
        (asked in ``on_step``)."""
        self._checkpoint_requested = True

    def skip_samples(self, end: int) -> None:
        """Move the data position forward to global sample ``end``: the samples in between are
        never trained on (recorded in the history, so a resumed run skips them too)."""
        start = self.state.samples
        if end <= start:
            raise ValueError(f"skip_samples({end}): the data position is already {start}")
        self.state.samples = int(end)
        self.record(Event.SKIP_SAMPLES, start=start, end=int(end))

    def scale_lr(self, factor: float) -> float:
        """Multiply the learning rate from this step on by ``factor``; returns the LR scale."""
        self.schedule.scale *= float(factor)
        return self.schedule.scale

    def set_lr(self, value: float) -> float:
        """The learning rate from this step on: ``value`` now, the schedule's shape after it
        (as a scale of the scheduled rate); returns the LR scale."""
        base = self.schedule.base_lr(self.state.step)
        self.schedule.scale = float(value) / max(base, 1e-30)
        return self.schedule.scale

    def add_source(self, name: str, source: Any, weights: dict[str, float]) -> None:
        """Open another token source and set ``weights`` (which may name it) from this step on;
        the run's config lists it, so a resume opens it too. Changes nothing if it fails."""
        self.data.add_source(name, source)
        try:
            self.data.set_weights(self.state.samples, weights)
        except BaseException:
            self.data.remove_source(name)
            raise
        listed = self.cfg.data.sources
        if listed and name not in listed:
            self.cfg.data.sources = sorted([*listed, name])

    def record(self, kind: Event | str, **details: Any) -> dict[str, Any]:
        """Add an applied command/event to the run history (saved in checkpoints); ``kind``
        must be one of :class:`aquila.engine.history.Event` (ValueError otherwise)."""
        entry = {
            "step": self.state.step,
            "samples": self.state.samples,
            "kind": Event(kind).value,
            **details,
        }
        self.history.append(entry)
        return entry

    def register_state(self, key: str, obj: Any) -> None:
        """Objects with state_dict/load_state_dict that must travel with checkpoints."""
        self._extra_state[key] = obj
        # Registered after a resume (e.g. in on_start): restore what the checkpoint holds for it.
        if key in self._pending_extra:
            obj.load_state_dict(self._pending_extra.pop(key))

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, *, save_final: bool = True) -> str:
        """Train to ``train.max_steps`` or a stop; returns the reason. ``save_final=False``
        leaves out the last state's checkpoint (a benchmark writes none)."""
        t = self.cfg.train
        reason = "completed"
        window_start, window_tokens = time.perf_counter(), 0
        try:
            for cb in self.callbacks:
                cb.on_start(self)
            while self.state.step < t.max_steps:
                for cb in self.callbacks:
                    cb.before_step(self)
                if self._checkpoint_requested:
                    self.try_save()
                if self._stop_reason:
                    reason = self._stop_reason
                    break
                step_start = time.perf_counter()
                metrics = self.train_step()
                self.state.train_seconds += time.perf_counter() - step_start
                window_tokens += metrics.batch_tokens
                if self.state.step % t.log_every == 0 or self.state.step == t.max_steps:
                    elapsed = time.perf_counter() - window_start
                    self._finalize_metrics(metrics, window_tokens, elapsed)
                    window_start, window_tokens = time.perf_counter(), 0
                for cb in self.callbacks:
                    cb.on_step(self, metrics)
                self._poll_checkpoint()
                due = t.checkpoint_every and self.state.step % t.checkpoint_every == 0
                if due or self._checkpoint_requested:
                    self.try_save()
            if self._stop_reason and reason == "completed":
                reason = self._stop_reason
        except BaseException:
            # A checkpoint being written is completed: it is the one to resume from.
            with contextlib.suppress(Exception):
                self.wait_for_checkpoint(collective=False)
            for cb in self.callbacks:
                with contextlib.suppress(Exception):
                    cb.on_end(self, "error")
            raise
        try:
            try:
                self.wait_for_checkpoint()
            except SaveFailed as exc:
                self._save_error(exc)  # "continue": the final checkpoint below is the retry
            if save_final and (reason == "completed" or self._stop_checkpoint):
                last = latest_checkpoint(self.run_dir)
                if last is None or not last.name.endswith(f"{self.state.step:08d}"):
                    self.save(wait=True)  # the last state: a failure here ends the run
        except BaseException:
            for cb in self.callbacks:
                with contextlib.suppress(Exception):
                    cb.on_end(self, "error")
            raise
        for cb in self.callbacks:
            cb.on_end(self, reason)
        return reason

    def train_step(self) -> StepMetrics:
        if self._compile_checked:
            return self._train_step()
        # The first step compiles (forward and backward graphs): a failure is the compiler's.
        try:
            out = self._train_step()
        except Exception as exc:
            if not _is_compile_error(exc):
                raise
            self._compile_failed(exc)
            self.optimizer.zero_grad(set_to_none=True)
            out = self._train_step()  # nothing of the failed attempt was applied
        self._compile_checked = True
        return out

    def _train_step(self) -> StepMetrics:
        t = self.cfg.train
        global_batch = self.ramp.size_at(self.state.step)
        local = global_batch // self.dist.dp_world
        micro = t.micro_batch_size or local
        seq_len = self.cfg.data.seq_len
        lr = self.schedule(self.state.step)
        set_lr(self.optimizer, lr)
        base = self.state.samples + self.dist.dp_rank * local
        n_sources = len(self.data.source_names)
        loss_sum = torch.zeros((), device=self.device)
        src_loss = torch.zeros(n_sources, device=self.device)
        src_count = torch.zeros(n_sources, device=self.device)
        # Each token counts once in the global mean, however the batch is split.
        norm = float(global_batch * seq_len)
        data_wait = 0.0
        batch_sources, batch_indices = [], []
        sync_last_only = self._fsdp_accumulation(micro < local)
        for start in range(0, local, micro):
            n = min(micro, local - start)
            if sync_last_only:
                # Accumulate unsharded gradients locally; one reduce-scatter after the last.
                self.model.set_requires_gradient_sync(start + n >= local)
            t0 = time.perf_counter()
            batch = self.data.read(np.arange(base + start, base + start + n, dtype=np.int64))
            inputs = batch.inputs.to(self.device, non_blocking=True)
            targets = batch.targets.to(self.device, non_blocking=True)
            sources = batch.source_ids.to(self.device, non_blocking=True)
            batch_sources.append(batch.source_ids)
            batch_indices.append(batch.global_indices)
            data_wait += time.perf_counter() - t0
            with self._autocast(), self._sdpa():
                losses = self.loss_fn(inputs, targets)
                aux = self._aux_loss()
            loss = losses.sum() / norm
            if aux is not None:
                loss = loss + aux * (n / local)
            loss.backward()
            seq_loss = losses.detach().mean(dim=1)
            loss_sum += seq_loss.sum() * seq_len
            src_loss.index_add_(0, sources, seq_loss)
            src_count.index_add_(0, sources, torch.ones_like(seq_loss))
        self._reduce_grads_and_stats(loss_sum, src_loss, src_count)
        grad_norm = self._clip_grads()
        info = {
            "loss": loss_sum / norm,
            "grad_norm": grad_norm,
            "source_ids": torch.cat(batch_sources),
            "global_indices": np.concatenate(batch_indices),
        }
        for cb in self.callbacks:
            cb.before_optimizer(self, info)
        skipped, self._skip_reason = self._skip_reason, None
        if skipped is None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.samples += global_batch
        self.state.tokens += global_batch * seq_len
        return StepMetrics(
            step=self.state.step,
            lr=lr,
            batch_size=global_batch,
            batch_tokens=global_batch * seq_len,
            data_wait_s=data_wait,
            skipped=skipped,
            loss_t=loss_sum / norm,
            grad_norm_t=grad_norm,
            source_loss_sum=src_loss,
            source_count=src_count,
            source_names=tuple(self.data.source_names),
        )

    # -- helpers ------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _aux_loss(self) -> torch.Tensor | None:
        if self.model.cfg.n_experts <= 0:
            return None
        from aquila.model.moe import moe_aux_loss

        return moe_aux_loss(self.model)

    def _fsdp_accumulation(self, accumulating: bool) -> bool:
        """Whether this step's micro-batches skip FSDP's gradient reduce-scatter until the last
        (``train.fsdp_sync_each_micro_batch = false``, the default: less communication, at the
        memory of one unsharded gradient per rank)."""
        if not accumulating or self.dist.world <= 1 or self.cfg.train.fsdp_sync_each_micro_batch:
            return False
        from aquila.engine.distributed import is_fsdp

        return is_fsdp(self.model)

    def _reduce_grads_and_stats(self, *stats: torch.Tensor) -> None:
        """Sum the loss statistics over the data-parallel replicas. FSDP has reduced the
        gradients in backward; tensor-parallel ranks already agree (same batch)."""
        if self.dist.world > 1:
            import torch.distributed as dist

            from aquila.engine.distributed import all_reduce_grads, is_fsdp

            for s in stats:
                dist.all_reduce(s)
                if self.dist.tp > 1:
                    s.div_(self.dist.tp)  # every tp rank added the same numbers
            if self.dist.dp_world > 1 and not is_fsdp(self.model):
                all_reduce_grads(self.model)

    def _clip_grads(self) -> torch.Tensor:
        """Clip to ``optim.grad_clip`` by the global gradient norm, which it returns."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        limit = self.cfg.optim.grad_clip or math.inf  # 0: no clipping, the norm is still measured
        if self.dist.world <= 1:
            return torch.nn.utils.clip_grad_norm_(params, limit)
        from aquila.engine.distributed import global_norm, local_tensors

        # Sharded, replicated and plain gradients on several meshes (FSDP2 + TP): the norm
        # counts each element once over all ranks.
        norm = global_norm([p.grad for p in params])
        coef = torch.clamp(limit / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(local_tensors([p.grad for p in params]), coef)
        return norm

    def _eager_loss_fn(self):
        t = self.cfg.train
        return functools.partial(
            self.model.token_losses, impl=t.loss, chunk_tokens=t.loss_chunk_tokens
        )

    def _compile(self) -> None:
        if self.dist.world == 1 and not self.cfg.train.activation_checkpointing:
            # One graph for blocks, head and loss: the elementwise work around the matmuls and
            # the log-softmax fuse (measured 18% faster than per-block graphs on CPU).
            self.loss_fn = torch.compile(self.loss_fn)
            self.compiled = "model"
        else:
            # Per block under FSDP/checkpointing: compile time flat in depth, graphs reused.
            for block in self.model.layers:
                block.compile()
            self.compiled = "blocks"
        self.record(Event.COMPILE, scope=self.compiled)

    def _compile_failed(self, exc: BaseException) -> None:
        """Stop with the compiler's error, or (``train.compile_fallback``) go on eagerly."""
        from aquila.errors import CompileFailed

        cause = _first_line(exc)
        if not self.cfg.train.compile_fallback:
            raise CompileFailed(
                f"torch.compile failed ({self.compiled}): {cause}; set "
                "train.compile_fallback = true to train eagerly instead, or train.compile = false"
            ) from exc
        self.loss_fn = self._eager_loss_fn()
        for block in self.model.layers:
            block._compiled_call_impl = None  # what nn.Module.compile set
        self.record(Event.COMPILE_FALLBACK, scope=self.compiled, error=cause)
        self.compiled = "eager-fallback"
        if self.is_main:
            print(
                f"aquila: warning: torch.compile failed, training eagerly: {cause}",
                file=sys.stderr,
                flush=True,
            )

    def _wrap_activation_checkpointing(self) -> None:
        from torch.utils.checkpoint import checkpoint

        extra = checkpoint_kwargs(self.cfg.train.ac_policy)
        for block in self.model.layers:
            forward = block.forward

            def wrapped(*args, _f=forward, **kwargs):
                return checkpoint(_f, *args, use_reentrant=False, **extra, **kwargs)

            block.forward = wrapped

    def _finalize_metrics(self, m: StepMetrics, tokens: int, seconds: float) -> None:
        """Fill the plain numbers; only on logging steps, so other steps never sync."""
        m.logged = True
        m.loss = float(m.loss_t)
        m.grad_norm = float(m.grad_norm_t)
        counts = m.source_count.tolist()
        m.source_loss = {
            name: float(loss) / c
            for name, loss, c in zip(m.source_names, m.source_loss_sum.tolist(), counts)
            if c > 0
        }
        m.tokens = self.state.tokens
        m.samples = self.state.samples
        m.tokens_per_s = tokens / max(seconds, 1e-9)
        achieved = m.tokens_per_s * self.flops_per_token
        m.mfu = achieved / self.peak if self.peak else None
        m.peak_memory = peak_memory_bytes(self.device)
        remaining = self.cfg.train.max_steps - self.state.step
        per_step = seconds / max(1, self.cfg.train.log_every)
        m.eta_s = remaining * per_step
        m.time = time.time()

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "trainer": asdict(self.state),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "history": list(self.history),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": random.getstate(),
            },
            # State restored but not yet claimed by a registered object travels on unchanged.
            "extra": {
                **self._pending_extra,
                **{k: v.state_dict() for k, v in self._extra_state.items()},
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = TrainState(**state["trainer"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            # Another optimizer's state (optim.name changed on resume): say so in one line.
            raise UserError(
                f"the checkpoint's optimizer state does not fit optim.name = "
                f"{self.cfg.optim.name!r} ({exc}); resume with the optimizer it was saved with"
            ) from None
        self.schedule.load_state_dict(state["schedule"])
        self.history = list(state.get("history", []))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        self._pending_extra = dict(state.get("extra", {}))
        for key, obj in self._extra_state.items():
            if key in self._pending_extra:
                obj.load_state_dict(self._pending_extra.pop(key))

    def try_save(self, wait: bool = False) -> Path | None:
        """``save``, following ``train.on_save_error`` when it fails: "stop" raises
        :class:`SaveFailed`; "continue" says so in one line and goes on (the next checkpoint
        is tried at the next interval). Collective in a multi-process run."""
        try:
            self.wait_for_checkpoint()  # a background write that failed does not skip this one
        except SaveFailed as exc:
            self._save_error(exc)
        try:
            return self.save(wait)
        except SaveFailed as exc:
            self._save_error(exc)
            return None

    def _save_error(self, exc: SaveFailed) -> None:
        if self.cfg.train.on_save_error != "continue":
            raise exc
        self.record(Event.SAVE_FAILED, error=str(exc))
        if self.is_main:
            print(f"aquila: warning: {exc}; training goes on", file=sys.stderr, flush=True)

    def save(self, wait: bool = False) -> Path | None:
        """Checkpoint this step; returns its dir on rank 0. With ``train.async_checkpoint``
        (unless ``wait``) the files are written in the background and None is returned;
        ``on_checkpoint`` runs once the checkpoint is complete. Collective in a multi-process
        run. A failed write (this one, or the background one before it) raises
        :class:`SaveFailed` having removed what it left."""
        self._checkpoint_requested = False
        self.wait_for_checkpoint()
        step = self.state.step
        for cb in self.callbacks:
            cb.before_save(self)
        try:
            if self.cfg.train.async_checkpoint and not wait:
                from aquila.engine.async_checkpoint import start_async_save

                if self.dist.world > 1 and self._checkpoint_group is None:
                    import torch.distributed as dist

                    self._checkpoint_group = dist.new_group(backend="gloo")
                self._pending_save = start_async_save(self, self._checkpoint_group)
                return None
            state = replace(self.state)
            if self.dist.world > 1:
                from aquila.engine.dcp import save_sharded

                path = save_sharded(self)  # collective: every rank writes its shards
            elif self.is_main:
                path = save_checkpoint(self.run_dir, step, self.model, self.state_dict())
            else:
                path = None
        except Exception as exc:
            raise self._save_failed(exc, step) from exc
        self._saved(path, state)
        return path

    def _save_failed(self, exc: Exception, step: int) -> SaveFailed:
        """The one-line error of a failed write, once what it left is removed."""
        if isinstance(exc, SaveFailed):
            return exc
        error = save_failure(exc, self.run_dir, step)
        if self.is_main:  # the lock is held: every temporary dir is a failed save's
            remove_stale_temps(self.run_dir)
        return error

    def wait_for_checkpoint(self, collective: bool = True) -> None:
        """Complete the checkpoint being written in the background, if any; raises
        :class:`SaveFailed` if it failed (on every rank: they agree first, unless
        ``collective`` is False)."""
        pending, self._pending_save = self._pending_save, None
        if pending is None:
            return
        pending.wait()
        ok = pending.error is None
        if self.dist.world > 1 and collective:
            from aquila.engine.dcp import _all_ok

            ok = _all_ok(ok)
        if not ok:
            if not collective:
                return
            error = pending.error
            if pending.failed is not None:
                error = pending.failed(pending.error)
            raise self._save_failed(error or RuntimeError("a rank failed"), pending.state.step)
        if not pending.reported and collective:
            pending.reported = True
            self._saved(pending.path, pending.state)

    def _poll_checkpoint(self) -> None:
        """Report a background checkpoint that has completed (no collective: a rank's own
        write). A failed one is handled here in one process, at the next wait in several."""
        pending = self._pending_save
        if pending is None or pending.reported or not pending.done():
            return
        if pending.error is None:
            pending.reported = True
            self._saved(pending.path, pending.state)
        elif self.dist.world == 1:
            try:
                self.wait_for_checkpoint()
            except SaveFailed as exc:
                self._save_error(exc)

    def _saved(self, path: Path | None, state: TrainState) -> None:
        if path is None:
            return
        prune_checkpoints(self.run_dir, self.cfg.train.keep_last, self.cfg.train.keep_every)
        self.checkpoint_state = state
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        """Load ``path``'s weights (and a sharded checkpoint's optimizer) into this run's model,
        whatever its layout; returns the training state for ``load_state_dict``. Collective in
        a multi-process run."""
        from aquila.engine.dcp import is_sharded, load_sharded

        self.wait_for_checkpoint()
        if self.dist.world > 1 or is_sharded(path):
            # Reshards model and optimizer for this world size (any source world size).
            return load_sharded(self, path)
        return load_checkpoint(path, self.model)

    def resume_from(self, path: Path) -> None:
        self.load_state_dict(self.read_checkpoint(path))

    def rewind(self, path: Path) -> None:
        """Go back to checkpoint ``path``'s weights, optimizer and step, keeping what was decided
        since (the history, the LR scale and the data's mixture): those name data positions,
        which stay valid. Collective in a multi-process run."""
        history, scale = list(self.history), self.schedule.scale
        # The data's state travels in checkpoints only when registered (a run's stream is).
        registered = any(obj is self.data for obj in self._extra_state.values())
        data = self.data if registered else None
        data_state = data.state_dict() if data is not None else None
        self.load_state_dict(self.read_checkpoint(path))
        self.history, self.schedule.scale = history, scale
        if data is not None:
            data.load_state_dict(data_state)
