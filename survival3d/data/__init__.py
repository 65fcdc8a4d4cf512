"""survival3d.data"""

# registers the real-anatomy dummy levels ct1-ct3 in survival3d.data.dummy.DUMMY_LEVELS (numpy-only at import)
from survival3d.data import real_anatomy as _real_anatomy  # noqa: F401,E402
