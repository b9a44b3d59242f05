"""Object stores: one small interface, two backends (`gs://` and `file://`)."""

from shared.store.base import ObjectInfo, ObjectStore, open_store

__all__ = ["ObjectInfo", "ObjectStore", "open_store"]
