"""The one config style: every params.yaml section (and every nested block of one) is a `Section`,
a pydantic model beside the code it configures. Validated on load, frozen, unknown keys are errors
that name the key; one serialiser (`to_dict`, JSON types, what metrics and checkpoints record) and
one fingerprint (`fingerprint`: the keys that change what a run computes, so a checkpoint resumes
only when they match; a section names the others in NOT_FINGERPRINTED)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    NOT_FINGERPRINTED: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(self.NOT_FINGERPRINTED))
