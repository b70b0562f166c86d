"""What every group of actors does the same way: start its actors, call them, fail fast, stop.

`LearnerGroup`, `GeneratorGroup` and `RewardGroup` start their actors with `ActorGroup.start`.
The learner and generator groups (and the weight sync that drives both) call their actors
through `ActorGroup.call_all` / `call_one` or `wait_all`: a rank or an engine that raises would
leave the others blocked in a collective, so the first error is raised at once, naming the actor
it came from. `as_cfg` turns whatever section the caller passed (the dataclass, an OmegaConf node,
a dict) into the section's dataclass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

import ray
from omegaconf import OmegaConf
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

__all__ = ["ActorGroup", "as_cfg", "wait_all"]


def as_cfg(obj, cls):
    """`obj` as the dataclass `cls`: itself, another dataclass's fields, an OmegaConf node or a
    mapping."""
    if isinstance(obj, cls):
        return obj
    if is_dataclass(obj):
        return cls(**asdict(obj))
    if OmegaConf.is_config(obj):
        return cls(**OmegaConf.to_container(obj, resolve=True))
    return cls(**dict(obj))


def wait_all(refs: Sequence, names: Sequence[str] | None = None) -> list:
    """ray.get of every ref in order, failing fast: the first actor to raise ends the wait, its
    error carrying a note with `names[i]` (the actor it came from). Items that are not ObjectRefs
    are returned as they are."""
    refs = list(refs)
    pending = {r: i for i, r in enumerate(refs) if isinstance(r, ray.ObjectRef)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        try:
            ray.get(done[0])
        except Exception as e:
            if names is not None and i < len(names):
                e.add_note(f"raised by {names[i]}")
            raise
    return [ray.get(r) if isinstance(r, ray.ObjectRef) else r for r in refs]


class ActorGroup:
    """A list of Ray actors of one kind, called together. Subclasses set `actors` (by `start`)
    and `kind` (how an actor is named in an error: "learner rank", "generator")."""

    kind = "actor"
    actors: list
    pg: Any = None  # a placement group the group reserved itself (released by shutdown)

    @staticmethod
    def start(
        cls,
        n: int,
        args_of,
        *,
        options: dict,
        placement_group=None,
        bundle_of: Sequence[int] | None = None,
        options_of=None,
        kwargs: dict | None = None,
    ) -> list:
        """`n` actors of the plain class `cls`: actor i built from `args_of(i)` (a tuple) and
        `kwargs` (the same for every actor), with Ray `options` (and `options_of(i)`, if given,
        merged over them), in bundle `bundle_of[i]` (default i) of `placement_group` when there
        is one."""
        remote = ray.remote(cls)
        actors = []
        for i in range(n):
            o = dict(options)
            if placement_group is not None:
                o["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group,
                    placement_group_bundle_index=i if bundle_of is None else int(bundle_of[i]),
                )
            if options_of is not None:
                o.update(options_of(i))
            actors.append(remote.options(**o).remote(*args_of(i), **(kwargs or {})))
        return actors

    def names(self) -> list[str]:
        return [f"{self.kind} {i}" for i in range(len(self.actors))]

    def wait(self, refs: Sequence) -> list:
        """`wait_all` over one ref per actor, in actor order."""
        return wait_all(refs, self.names())

    def call_all(self, method: str, *args, **kwargs) -> list:
        """Every actor's `method(*args, **kwargs)`, results in actor order, failing fast."""
        return self.wait([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def call_one(self, method: str, *args, index: int = 0, **kwargs):
        """Actor `index`'s `method(*args, **kwargs)`."""
        return wait_all(
            [getattr(self.actors[index], method).remote(*args, **kwargs)], [f"{self.kind} {index}"]
        )[0]

    def kill(self) -> None:
        """Stop every actor and release the placement group this group reserved itself."""
        actors, self.actors = list(getattr(self, "actors", [])), []
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
        if self.pg is not None:
            try:
                ray.util.remove_placement_group(self.pg)
            except Exception:
                pass
            self.pg = None

    def shutdown(self) -> None:
        self.kill()
