"""survival3d: 3D medical survival analysis on MONAI + PyTorch.

Data flows one way: :mod:`survival3d.data` → :mod:`survival3d.models` → :mod:`survival3d.losses` →
:mod:`survival3d.engine` → :mod:`survival3d.explain`. Config names become objects in the ``build_*`` functions.
"""

__version__ = "0.1.0"

import logging as _logging
import warnings as _warnings

# MONAI announces on import of monai.data, once per process, that the optional nvImageCodec DICOM decoder is not
# installed (a UserWarning plus a WARNING log line) and then uses pydicom's decoders, as this project does anyway.
_warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin", category=UserWarning)
_logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(_logging.ERROR)
