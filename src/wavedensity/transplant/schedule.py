"""The mixing schedule of a transplant run: alpha warm-up, the teacher-to-WDA hand-off, named stages
and the gamma floor, as a pure function of the step (so a resumed run gets the same values)."""

from dataclasses import dataclass

from .config import TransplantConfig


@dataclass(frozen=True)
class Mixing:
    alpha: float
    teacher_scale: float
    wda_scale: float
    gate_temp: float
    gamma_floor: float | None
    stage: str | None  # the named stage in force, if any


def _lerp(start: float, end: float, progress: float) -> float:
    return start + (end - start) * progress


def handoff_progress(step: int, config: TransplantConfig) -> float:
    """0 before ``handoff_start_step``, rising linearly to 1 over ``handoff_steps`` (a jump when 0)."""
    if config.handoff_steps == 0:
        return 0.0 if step < config.handoff_start_step else 1.0
    return min(1.0, max(0.0, (step - config.handoff_start_step) / config.handoff_steps))


def mixing_at(step: int, config: TransplantConfig) -> Mixing:
    """Values in force at (0-based) ``step``.

    alpha: ``alpha_max * min(1, (step + 1) / alpha_warmup_steps)``. Teacher scale, WDA scale and the
    gamma floor move from their ``*_start`` to their ``*_end`` values across the hand-off window.
    ``teacher_free_mode`` pins the teacher scale to 0. A stage of ``schedule.stages`` covering the
    step (``start_step <= step < start_step + steps``; the first such stage wins) sets the values it
    names; the others keep the flat schedule's.
    """
    warm = config.alpha_warmup_steps
    alpha = config.alpha_max * (min(1.0, (step + 1) / warm) if warm else 1.0)
    progress = handoff_progress(step, config)
    teacher_scale = _lerp(config.teacher_scale_start, config.teacher_scale_end, progress)
    wda_scale = _lerp(config.wda_scale_start, config.wda_scale_end, progress)
    floor = None
    if config.gamma_floor_start is not None:
        floor = _lerp(config.gamma_floor_start, config.gamma_floor_end, progress)
    values = dict(alpha=alpha, teacher_scale=teacher_scale, wda_scale=wda_scale, gate_temp=config.wda_gate_temp)
    stage_name = None
    for stage in (config.schedule or {}).get("stages", []):
        if stage["start_step"] <= step < stage["start_step"] + stage["steps"]:
            values.update({k: float(stage[k]) for k in values if k in stage})
            stage_name = stage.get("name", f"stage@{stage['start_step']}")
            break
    if config.teacher_free_mode:
        values["teacher_scale"] = 0.0
    return Mixing(**values, gamma_floor=floor, stage=stage_name)
