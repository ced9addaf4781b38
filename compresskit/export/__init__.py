"""Writing artifacts (on core only): the native checkpoint (`native`), exports engines read (`gptq`,
`compressed_tensors`, reading the native directory through `source`), the model card (`card`) and pushing
to a hub (`hub`). Only `save_native` is imported here; the others load on use."""
from .native import save_native

__all__ = ["save_native"]
