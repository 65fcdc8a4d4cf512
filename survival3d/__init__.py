"""survival3d: 3D medical survival analysis on MONAI + PyTorch.

Data flows one way: :mod:`survival3d.data` → :mod:`survival3d.models` → :mod:`survival3d.losses` →
:mod:`survival3d.engine` → :mod:`survival3d.explain`. Config names become objects in the ``build_*`` functions.
"""

__version__ = "0.1.0"
