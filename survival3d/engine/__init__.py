"""survival3d.engine"""
