"""Science modules: the API users write against, and the built-in modules."""

from fink.science.science_api import ScienceModule, ScienceModuleError, apply_modules, load_modules, module

__all__ = ["ScienceModule", "ScienceModuleError", "apply_modules", "load_modules", "module"]
