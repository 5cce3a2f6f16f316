"""What the data stages read from outside the artifact root: the registered sources' files, by content."""

from engine.store.content import ContentHasher, source_identity
from engine.data.registry import recipe_sources

# recipe keys that only say where the sources are: their content is fingerprinted instead, so moving a data
# folder rebuilds nothing while editing one row rebuilds everything downstream
DATA_LOCATION = ("data.dataset_dir", "data.dataset_info", "data.dataset", "data.allowed_roots")


def registered_sources(recipe, hasher: ContentHasher) -> dict:
    return {"sources": source_identity(recipe_sources(recipe.data), hasher)}
