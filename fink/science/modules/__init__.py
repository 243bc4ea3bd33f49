"""Built-in science modules (each declared with :func:`fink.science.module`)."""

#: the built-in modules, in the order raw2science applies them by default
BUILTIN = [
    "fink.science.modules.features:lightcurve_features",
    "fink.science.modules.classifier:snia_classifier",
    "fink.science.modules.sso:solar_system",
    "fink.science.modules.xmatch:crossmatch",
]
