"""The one place where COCO category ids and contiguous training labels are mapped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backbones_tools.data.errors import CocoFormatError


@dataclass(frozen=True)
class CategoryMap:
    """Bijective map between COCO category ids and contiguous labels ``1..K`` (0 = background).

    ``category_ids[i]`` has label ``i + 1``. Save :meth:`to_dict` with checkpoints and rebuild
    with :meth:`from_dict` so predictions always map back to the ids they were trained on.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]
    _label_of: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = tuple(int(i) for i in self.category_ids)
        names = tuple(str(n) for n in self.names)
        if len(ids) != len(names):
            raise ValueError(f"CategoryMap: {len(ids)} category ids but {len(names)} names")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"CategoryMap: duplicate category ids {dup}")
        object.__setattr__(self, "category_ids", ids)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "_label_of", {cid: k + 1 for k, cid in enumerate(ids)})

    @classmethod
    def from_coco_categories(
        cls, categories: Sequence[Mapping[str, Any]], subset: Iterable[int | str] | None = None
    ) -> "CategoryMap":
        """Build from a COCO ``categories`` list, sorted by id, or in the order of ``subset``.

        ``subset`` items are category ids or names; an unknown one is an error naming it.
        """
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
        if subset is None:
            ids = sorted(by_id)
        else:
            by_name = {name: cid for cid, name in by_id.items()}
            ids = []
            for item in subset:
                if isinstance(item, str) and not item.lstrip("-").isdigit():
                    if item not in by_name:
                        raise CocoFormatError(
                            f"category name {item!r} is not in categories {sorted(by_name)}"
                        )
                    ids.append(by_name[item])
                else:
                    if int(item) not in by_id:
                        raise CocoFormatError(
                            f"category id {item} is not in categories {sorted(by_id)}"
                        )
                    ids.append(int(item))
        return cls(tuple(ids), tuple(by_id[i] for i in ids))

    @property
    def num_classes(self) -> int:
        """Number of foreground classes ``K`` (torchvision detectors want ``K + 1``)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.category_ids)

    def __contains__(self, category_id: object) -> bool:
        return category_id in self._label_of

    def label(self, category_id: int) -> int:
        """Contiguous label of a COCO category id."""
        try:
            return self._label_of[int(category_id)]
        except KeyError:
            raise KeyError(
                f"category id {category_id} is not in the category map {list(self.category_ids)}"
            ) from None

    def category_id(self, label: int) -> int:
        """COCO category id of a contiguous label (1..K)."""
        label = int(label)
        if not 1 <= label <= len(self.category_ids):
            raise KeyError(f"label {label} is outside 1..{len(self.category_ids)}")
        return self.category_ids[label - 1]

    def name(self, label: int) -> str:
        """Category name of a contiguous label (label 0 is ``background``)."""
        if int(label) == 0:
            return "background"
        self.category_id(label)  # validates the range
        return self.names[int(label) - 1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored in checkpoints and metrics files."""
        return {
            "category_ids": list(self.category_ids),
            "names": list(self.names),
            "labels": list(range(1, len(self.category_ids) + 1)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CategoryMap":
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(data["category_ids"]), tuple(data["names"]))
        except KeyError as exc:
            raise ValueError(f"CategoryMap.from_dict: missing key {exc.args[0]!r}") from None
