"""udm-pixelate: an example third-party udm plugin (entry point ``pixelate`` in the group ``udm``).

Registers the ``pixelate`` corruption, the ``bars`` dataset and the ``pyramid_swd`` metric. Samplers
are not written here: udm derives them from the capabilities :class:`Pixelate` offers.
"""

import udm

from .corruption import Pixelate
from .extras import bars, pyramid_swd

__version__ = "0.1.0"
__all__ = ["Pixelate", "bars", "pyramid_swd"]


@udm.hookimpl
def udm_register_corruptions(register):
    register(Pixelate)


@udm.hookimpl
def udm_register_datasets(register):
    register(bars)


@udm.hookimpl
def udm_register_metrics(register):
    register(pyramid_swd)
