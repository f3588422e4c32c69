from legibility.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from legibility.models.sites import ARCHITECTURES, Sites, SiteSpec

__all__ = ["ARCHITECTURES", "DEFAULT_MODEL", "LoadedModel", "SiteSpec", "Sites", "load_model"]
