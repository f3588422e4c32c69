"""String-keyed registries of interchangeable parts (attribution methods, metrics, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from legibility.errors import LegibilityError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> item; registering a name twice is an error, looking up an unknown name lists the known ones."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise LegibilityError(
                f"unknown {self.what} {name!r}; available: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)

    def unregister(self, name: str) -> T:
        """Remove ``name`` (for parts registered for a while, e.g. by a test); an unknown name is an error."""
        self[name]  # one line listing the known ones
        return self._items.pop(name)

    def items(self) -> list[tuple[str, T]]:
        """(name, item) in the order they were registered (display order where it matters)."""
        return list(self._items.items())
