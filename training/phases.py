"""The one table of training methods and their phases (paper §3.2 and the ablation baselines of Table 1).

Per method: its phases in order, whether the bundle has an appearance latent and label input, the paper's name,
and which phases ``rerender train --time`` times on the device. Per phase: the TrainConfig field of its step
count, the networks it trains, the Trainer method that takes one step, the ``--stage`` that runs it alone, and the
phases it needs done first. The trainer, the time-budget planner and ``rerender train`` (choices, help, errors) all
read this table, so a method or phase is named here only.

No torch here: the command line builds its choices from it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    steps_field: str  # the TrainConfig field holding this phase's step count
    trains: frozenset[str]  # networks one step changes: E (appearance encoder), R (rerenderer), D, S (semantic)
    step: str  # the Trainer method that takes one step on a batch
    stage: str | None = None  # the ``--stage`` value that runs this phase alone
    needs: tuple[str, ...] = ()  # phases whose result this one starts from
    setup: str | None = None  # a Trainer method run once before the phase's first step
    validates: bool = True  # writes validation images (not while only the encoder trains)
    about: str = ""  # what the phase does, for ``--stage``'s help


@dataclass(frozen=True)
class Method:
    name: str
    phases: tuple[Phase, ...]
    latent: bool  # the rerenderer is conditioned on an appearance latent (the bundle has an encoder)
    semantics: bool  # the photo's segmentation is an input channel
    title: str  # the paper's name (Table 1 rows)
    probe: tuple[str, ...]  # phases timed on the device by ``rerender train --time`` (the rest are derived)

    @property
    def phase_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.phases)

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"the {self.name} method has no phase {name!r}; its phases: {', '.join(self.phase_names)}")


_E, _R, _D, _S = "E", "R", "D", "S"
APPEARANCE = Phase("appearance", "steps_stage1", frozenset({_E}), "step_appearance", stage="1",
                   setup="_prepare_style_distances", validates=False, about="appearance pretraining (Ea)")
RERENDER = Phase("rerender", "steps_stage2", frozenset({_R, _D}), "step_rerender", stage="2", needs=("appearance",),
                 setup="_standardise_latents", about="the rerenderer with the encoder frozen")
FINETUNE = Phase("finetune", "steps_stage3", frozenset({_R, _D, _E}), "step_finetune", stage="3",
                 needs=("appearance",), about="both finetuned")
BASELINE_RERENDER = Phase("rerender", "steps_baseline", frozenset({_R, _D}), "step_rerender")
BICYCLE = Phase("bicycle", "steps_baseline", frozenset({_R, _D, _E}), "step_bicycle")
SEMANTIC = Phase("semantic", "steps_semantic", frozenset({_S}), "step_semantic", stage="semantic",
                 about="the semantic predictor S")

METHOD_TABLE: dict[str, Method] = {m.name: m for m in (
    Method("staged", (APPEARANCE, RERENDER, FINETUNE, SEMANTIC), latent=True, semantics=True,
           title="+Sem+StagedApp (staged, ours)", probe=("rerender", "semantic")),
    Method("i2i", (BASELINE_RERENDER, SEMANTIC), latent=False, semantics=False, title="I2I", probe=("rerender",)),
    Method("sem", (BASELINE_RERENDER, SEMANTIC), latent=False, semantics=True, title="+Sem", probe=("rerender",)),
    Method("bicycle", (BICYCLE, SEMANTIC), latent=True, semantics=True, title="+Sem+BaseApp", probe=("bicycle",)),
)}
METHODS: tuple[str, ...] = tuple(METHOD_TABLE)
DEFAULT_METHOD = "staged"
#: ``--stage`` values: every phase that can run alone, in the order they run, after ``all``
STAGE_CHOICES: tuple[str, ...] = ("all", *dict.fromkeys(p.stage for m in METHOD_TABLE.values()
                                                          for p in m.phases if p.stage))
#: every phase name, in the order they first appear
PHASE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(p.name for m in METHOD_TABLE.values() for p in m.phases))


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do (an unknown method or stage,
    a stage the method does not have, ...). Defined here so the table can refuse names; the trainer raises it too."""


def method(name: str) -> Method:
    if name not in METHOD_TABLE:
        raise TrainingError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return METHOD_TABLE[name]


def phases_for(method_name: str, stage: str = "all") -> tuple[str, ...]:
    """The phases a run of ``method_name`` with ``--stage stage`` goes through, in order."""
    m = method(method_name)
    if stage == "all":
        return m.phase_names
    if stage not in STAGE_CHOICES:
        raise TrainingError(f"unknown stage {stage!r}; use {', '.join(STAGE_CHOICES[:-1])} or {STAGE_CHOICES[-1]}")
    chosen = tuple(p.name for p in m.phases if p.stage == stage)
    if not chosen:
        owners = [o.name for o in METHOD_TABLE.values() if any(p.stage == stage for p in o.phases)]
        raise TrainingError(f"--stage {stage} belongs to the {' / '.join(owners)} method; {method_name} runs with "
                         f"--stage all")
    return chosen


def steps_field(method_name: str, phase: str) -> str:
    """The TrainConfig field of ``phase``'s step count in ``method_name``."""
    return method(method_name).phase(phase).steps_field


def method_help() -> str:
    return ", ".join(f"{m.name} ({m.title})" for m in METHOD_TABLE.values())


def stage_help() -> str:
    staged = [p for p in METHOD_TABLE[DEFAULT_METHOD].phases if p.stage]
    return (f"{DEFAULT_METHOD} method: " + ", ".join(f"{p.stage} = {p.about}" for p in staged)
            + "; all = every phase of the method in order")


__all__ = ["DEFAULT_METHOD", "METHODS", "METHOD_TABLE", "Method", "PHASE_NAMES", "Phase",
           "STAGE_CHOICES", "TrainingError", "method", "method_help", "phases_for", "stage_help", "steps_field"]
