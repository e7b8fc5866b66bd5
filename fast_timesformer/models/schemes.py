"""Moved to :mod:`fast_timesformer.schemes` (beside :mod:`fast_timesformer.groups`); this name stays so that
``from fast_timesformer.models.schemes import ...`` keeps working. Same objects, same registry."""
from ..schemes import *  # noqa: F401,F403
from ..schemes import (  # noqa: F401
    PALETTE,
    SCHEMES,
    Scheme,
    Step,
    StepModules,
    __all__,  # noqa: F401
    _fits_any_size,
    _local_global_why_not,
    get_scheme,
    global_groups,
    height_groups,
    joint_groups,
    list_schemes,
    local_groups,
    register_scheme,
    scheme_color,
    space_groups,
    step_groups,
    time_groups,
    unregister_scheme,
    width_groups,
)
