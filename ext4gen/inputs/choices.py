"""The build choices every front door takes the same way (its own module: the CLI's
argument parsing needs it without loading the planner)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.identity import IdentityMap
from ..model.options import ImageFlags, check_dedup


@dataclass(frozen=True)
class BuildChoices:
    """The options that shape an image and that every front door takes the same way.

    None leaves the SOURCE's own choice (a manifest's ``[image]`` table).
    """

    dedup: str | None = None
    inline_data: bool | None = None
    base_map: str | None = None  # an identity map written by ``build --write-map``
    source_root: str | None = None  # host paths must resolve inside it; generators refused
    flags: ImageFlags = field(default_factory=ImageFlags)  # label, uuid, owners, times, labels …
    generator_path: tuple[str, ...] = ()  # more directories generator modules may come from
    load_generators: bool = True  # False: commands that read no data never import them

    def __post_init__(self) -> None:
        if self.dedup is not None:
            check_dedup(self.dedup)

    def overrides(self) -> dict[str, object]:
        """:class:`ImageOptions` fields to set over the SOURCE's own."""
        out: dict[str, object] = {}
        if self.dedup is not None:
            out["dedup"] = self.dedup
        if self.inline_data is not None:
            out["inline_data"] = self.inline_data
        if self.base_map is not None:
            out["base_map"] = IdentityMap.load(self.base_map)
        for name, value in self.flags.image_overrides().items():
            out[name] = value
        return out
